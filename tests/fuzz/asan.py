"""The C wire decoder built with AddressSanitizer (and UBSan), fed the seed corpus and random inputs.

Every input goes through both entry points and is compared with the pure-Python reference
(:func:`tests.fuzz.logwire_fuzz.check`); an out-of-bounds read, a use after free or undefined behaviour
aborts the run. The build goes to a temporary directory (the installed extension is untouched) and the run
is a child Python with the sanitizer's runtime preloaded, as an instrumented extension needs.

    uv run python -m tests.fuzz.asan --seconds 60
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import candela_ingest.wire
from tests.fuzz.logwire_fuzz import CORPUS, check, load_extension

SOURCE = Path(candela_ingest.wire.__file__).with_name("_logwire.c")
SANITIZERS = "-fsanitize=address,undefined"
ROOT = Path(__file__).resolve().parents[2]
"""The repository, where the child Python finds ``tests.fuzz``."""


def build(directory: Path) -> Path:
    """Compiles ``_logwire.c`` with the sanitizers into ``directory``; the path of the extension."""
    target = directory / f"_logwire{sysconfig.get_config_var('EXT_SUFFIX')}"
    include = sysconfig.get_paths()["include"]
    command = ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer", SANITIZERS]
    command += ["-fno-sanitize-recover=all", "-Wall", "-Wextra", "-Werror", f"-I{include}", str(SOURCE), "-o"]
    subprocess.run([*command, str(target)], check=True)
    return target


def runtime() -> str:
    """The path of gcc's AddressSanitizer runtime, to preload into the Python that imports the build."""
    found = subprocess.run(["gcc", "-print-file-name=libasan.so"], check=True, capture_output=True, text=True)
    return found.stdout.strip()


def _mutated(data: bytes, generator: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(generator.randint(1, 4)):
        position = generator.randint(0, max(len(buffer) - 1, 0))
        kind = generator.randrange(4)
        if kind == 0 and buffer:
            buffer[position] = generator.randrange(256)
        elif kind == 1:
            buffer[position:position] = generator.randbytes(generator.randint(1, 8))
        elif kind == 2:
            del buffer[position:]
        else:
            buffer[position:position] = bytes([0xFF] * generator.randint(1, 11))  # a varint that never ends
    return bytes(buffer)


def feed(extension_path: str, seconds: float, seed: int) -> int:
    """Feeds the corpus, then random and mutated inputs for ``seconds``; the number of inputs fed."""
    extension = load_extension(extension_path)
    generator = random.Random(seed)
    seeds = [path.read_bytes() for path in sorted(CORPUS.iterdir())]
    for data in seeds:
        check(extension, data)
    fed = len(seeds)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if generator.random() < 0.2:
            data = generator.randbytes(generator.randint(0, 64))
        else:
            data = _mutated(generator.choice(seeds), generator)
        check(extension, data)
        fed += 1
    return fed


def run(seconds: float, seed: int) -> subprocess.CompletedProcess[str]:
    """Builds the sanitized decoder in a temporary directory and feeds it in a child Python."""
    with tempfile.TemporaryDirectory(prefix="candela-asan-") as directory:
        extension = build(Path(directory))
        environment = {
            **os.environ,
            "LD_PRELOAD": runtime(),
            # CPython's own allocations look like leaks at exit; the decoder's are freed by its callers' tests.
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
            "UBSAN_OPTIONS": "print_stacktrace=1",
        }
        command = [sys.executable, "-m", "tests.fuzz.asan", "--feed", str(extension)]
        command += ["--seconds", str(seconds), "--seed", str(seed)]
        return subprocess.run(command, env=environment, cwd=ROOT, capture_output=True, text=True, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--feed", help="(internal) the sanitized build to feed, in this process")
    arguments = parser.parse_args()
    if arguments.feed:
        fed = feed(arguments.feed, arguments.seconds, arguments.seed)
        print(f"fed {fed} inputs to the sanitized decoder, no fault")
        return
    result = run(arguments.seconds, arguments.seed)
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    sys.exit(result.returncode)


if __name__ == "__main__":
    main()
