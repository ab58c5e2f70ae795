"""Language ids, in one place: file extensions -> LSP language ids, and LSP ids or aliases -> the tree-sitter
grammar that checks them (fim_server.shared.syntax)."""

from __future__ import annotations

# file extension -> LSP language id (what an editor would send in didOpen)
EXTENSIONS = {".py": "python", ".pyi": "python", ".js": "javascript", ".mjs": "javascript",
              ".cjs": "javascript", ".jsx": "javascriptreact", ".ts": "typescript", ".mts": "typescript",
              ".cts": "typescript", ".tsx": "typescriptreact"}

# LSP language id or a common alias -> grammar key
GRAMMAR_KEYS = {
    "python": "python", "py": "python", "python3": "python",
    "javascript": "javascript", "js": "javascript", "javascriptreact": "javascript", "jsx": "javascript",
    "typescript": "typescript", "ts": "typescript",
    "typescriptreact": "tsx", "tsx": "tsx",
}


def language_from_path(path: str) -> str | None:
    """LSP language id of a file path or URI, from its extension (None: not a language Diffill knows)."""
    dot = path.rfind(".")
    return None if dot < 0 else EXTENSIONS.get(path[dot:].lower())


def grammar_key(language: str | None) -> str | None:
    """Editor / LSP language id or alias -> grammar key ("python", "javascript", "typescript", "tsx")."""
    return None if language is None else GRAMMAR_KEYS.get(language.strip().lower())
