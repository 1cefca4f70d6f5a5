"""`python -m opensora_core.cli.main_module` == `opensora` (for environments without the console script)."""

from opensora_core.cli import main

if __name__ == "__main__":
    main()
