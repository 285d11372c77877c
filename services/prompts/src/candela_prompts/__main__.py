"""``python -m candela_prompts``: runs the prompts service."""

from candela_prompts.app import main
from candela_runtime.lifecycle import run

run(main)
