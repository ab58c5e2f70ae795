"""Where the model shipped in the package lives. Torch-free: the CLI and the language server name it without
loading anything."""

from pathlib import Path

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
