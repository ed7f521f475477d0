"""The man page and shell completions, generated from the argument parser.

I/O only in ``main``. The generated files are shipped in the package
(``libvirt_vmotion/share``) and installed by ``./run``; a test regenerates them
and fails when the parser changed without them. Regenerate with::

    .venv/bin/python -m libvirt_vmotion.cli.docs src/libvirt_vmotion/share

The generators (argparse-manpage, shtab) are needed only for that (the test
extra); ``vmotion completion SHELL`` prints the shipped file.
"""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path
from typing import Final

from libvirt_vmotion import __version__
from libvirt_vmotion.cli.app import build_parser

RELEASE_DATE: Final = "2026-12-04"
"""The man page's date: fixed, so regenerating gives the same file on any day."""
FILES: Final = {"man": "vmotion.1", "bash": "vmotion.bash", "zsh": "_vmotion"}


def man_page() -> str:
    """``vmotion(1)`` in roff, every command and option with its help."""
    from argparse_manpage.manpage import Manpage  # noqa: PLC0415  a generator, test extra only

    data = {
        "project_name": "libvirt-vmotion",
        "version": __version__,
        "date": RELEASE_DATE,
        "description": "vMotion-style live migration for libvirt/QEMU hosts",
        "manual_title": "libvirt-vmotion manual",
    }
    return str(Manpage(build_parser(), _data=data))


def completion(shell: str) -> str:
    """The ``shell`` (bash or zsh) completion script for ``vmotion``."""
    import shtab  # noqa: PLC0415  a generator, test extra only

    return str(shtab.complete(build_parser(), shell=shell))


def generated() -> dict[str, str]:
    """Every generated file by name."""
    return {
        FILES["man"]: man_page(),
        FILES["bash"]: completion("bash"),
        FILES["zsh"]: completion("zsh"),
    }


def shipped(kind: str) -> str:
    """The shipped file of ``kind`` (man, bash, zsh)."""
    return files("libvirt_vmotion").joinpath("share", FILES[kind]).read_text()


def main(argv: list[str]) -> int:
    """Write the generated files into the folder ``argv[0]``."""
    if len(argv) != 1:
        sys.stderr.write("usage: python -m libvirt_vmotion.cli.docs FOLDER\n")
        return 2
    folder = Path(argv[0])
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in generated().items():
        (folder / name).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
