"""``python -m candela_stack.fake_provider --port P``: the fake provider until SIGTERM or SIGINT."""

from candela_stack.fake_provider.app import main

if __name__ == "__main__":
    main()
