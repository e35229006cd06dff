"""Compile the C extensions of this folder (``_hqfast.c``, every ``_*.c``) in place.

Usage: ``python -m services.beam_launcher.native.build [--check] [--cc CC] [--debug]``

Uses the system C compiler (``$CC``, else ``cc``, else ``gcc``) with the running
interpreter's headers; ``_name.c`` becomes ``_name<EXT_SUFFIX>`` in this folder, written
to a temporary name first and renamed into place (atomic: a running process never imports
a half-written file). Without a compiler it prints a warning and exits 0 (the pipeline then
uses the pure-Python parser); with ``--check`` it exits 1 instead, as it does when the
compilation fails.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_hqfast.c"
CFLAGS = ("-O2", "-shared", "-fPIC", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter")


def sources() -> list[Path]:
    """Every ``*.c`` of this folder: each one is compiled into its own module."""
    return sorted(HERE.glob("*.c"))


def target_path(source: Path = SOURCE) -> Path:
    """Where the compiled module goes (the name this interpreter imports)."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return HERE / f"{source.stem}{suffix}"


def up_to_date(source: Path) -> bool:
    """The module exists and is newer than its source and than this build script."""
    target = target_path(source)
    if not target.exists():
        return False
    built = target.stat().st_mtime
    return built >= source.stat().st_mtime and built >= Path(__file__).stat().st_mtime


def find_compiler(explicit: str | None = None) -> list[str] | None:
    """The compiler command (``--cc``, ``$CC``, ``cc`` or ``gcc``), or None if none exists."""
    for candidate in (explicit, os.environ.get("CC"), "cc", "gcc"):
        if not candidate:
            continue
        argv = shlex.split(candidate)
        if argv and shutil.which(argv[0]):
            return argv
    return None


def compile_command(
    compiler: list[str], output: Path, debug: bool = False, source: Path = SOURCE
) -> list[str]:
    include = sysconfig.get_paths()["include"]
    flags = [f for f in CFLAGS if not (debug and f == "-O2")]
    if debug:
        flags += ["-O0", "-g"]
    return [*compiler, *flags, f"-I{include}", str(source), "-o", str(output)]


def build(compiler: list[str], debug: bool = False, source: Path = SOURCE) -> Path:
    """Compile and atomically install the module; raises CalledProcessError on failure."""
    target = target_path(source)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{source.stem}-", suffix=".so.tmp", dir=HERE)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        cmd = compile_command(compiler, tmp, debug, source)
        print("native build:", shlex.join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        tmp.chmod(0o755)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when it cannot be built")
    parser.add_argument("--cc", help="compiler command (default: $CC, cc, gcc)")
    parser.add_argument("--debug", action="store_true", help="-O0 -g instead of -O2")
    parser.add_argument("--force", action="store_true", help="rebuild modules that are current")
    args = parser.parse_args(argv)
    compiler = find_compiler(args.cc)
    if compiler is None:
        print(
            "native build: WARNING: no C compiler found (tried $CC, cc, gcc); "
            "the pure-Python parsers will be used",
            file=sys.stderr,
        )
        return 1 if args.check else 0
    for source in sources():  # one module per .c file, same flags
        if not (args.force or args.debug) and up_to_date(source):
            print(f"native build: {target_path(source).name} is up to date")
            continue
        try:
            target = build(compiler, args.debug, source)
        except (subprocess.CalledProcessError, OSError) as exc:
            print(f"native build: FAILED: {exc}", file=sys.stderr)
            return 1
        print(f"native build: wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
