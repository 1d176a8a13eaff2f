"""The paper's models, datasets and the one shared trainer used by every launcher."""
