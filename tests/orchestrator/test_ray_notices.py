"""What Ray and Tune log that onorm leaves out (execute/runner.py's LEFT_OUT), and only that."""

from __future__ import annotations

import logging

from orchestrator.execute.runner import quiet_ray_notices


class Kept(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def logged(name: str, *messages: str) -> list[str]:
    logger, kept = logging.getLogger(name), Kept()
    logger.addHandler(kept)
    try:
        for message in messages:
            logger.warning(message)
    finally:
        logger.removeHandler(kept)
    return kept.messages


def test_the_notices_onorm_says_better_are_left_out_and_nothing_else():
    quiet_ray_notices()
    quiet_ray_notices()   # twice: still one filter each
    tune = "ray.tune.tune"
    assert len(logging.getLogger(tune).filters) == 1
    assert logged(tune,
                  "Experiment has been interrupted, but the most recent state was saved.\n"
                  "Resume experiment with: Tuner.restore(path=...)",
                  "Trials did not complete: [run_trial_00001]",
                  "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run.") == [
        "Stop signal received (e.g. via SIGINT/Ctrl+C), ending Ray Tune run."]
    token = "ray._private.authentication.authentication_token_setup"
    assert logged(token, "Token authentication is enabled for this cluster",
                  "This cluster runs without token authentication") == [
        "This cluster runs without token authentication"]
    # another logger's message with the same words is untouched
    assert logged("ray.tune.other", "Trials did not complete: [x]") == [
        "Trials did not complete: [x]"]
