"""Put on a test node's PYTHONPATH: torchvision's CIFAR download there writes a small
synthetic CIFAR-10 instead (this machine has no internet) and counts itself, one line per
download, in the file named by ONORM_TEST_DOWNLOADS. Patched when torchvision's cifar
module is first imported, so that processes which never load it pay nothing."""

import importlib.abc
import importlib.util
import os
import sys

TARGET = "torchvision.datasets.cifar"


def _patch(module) -> None:
    def download(self) -> None:
        if self._check_integrity():
            return
        from trainers.data.synthetic import write_synthetic_cifar

        with open(os.environ["ONORM_TEST_DOWNLOADS"], "a") as f:
            f.write(f"{os.getpid()} {self.root}\n")
        write_synthetic_cifar(self.root, classes=10, n_train=128, n_test=64, seed=0)

    module.CIFAR10.download = download
    # the synthetic files have other checksums than the real ones torchvision knows
    module.check_integrity = lambda fpath, md5=None: os.path.isfile(fpath)
    module.CIFAR10._check_integrity = lambda self: os.path.isfile(
        os.path.join(self.root, self.base_folder, "batches.meta"))


class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("ONORM_TEST_DOWNLOADS"):
    sys.meta_path.insert(0, _Hook())
