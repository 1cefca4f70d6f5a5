"""`python -m opensora_core.cli.main_module` == `opensora` (for environments without the console script)."""

from opensora_core.lifetime import bind_to_owner

bind_to_owner()  # before the heavy imports: a job whose owner died stops here

from opensora_core.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
