"""Print the lines of requirements-dev.txt that apply to CPython VERSION on 64-bit Windows.

pip judges a requirement's markers by the Python it runs on, even with --platform and
--python-version, so a Linux pip installing Windows wheels for another version would pick
the wrong lines (and leave out what only Windows needs, such as pytest's colorama). The
file pins every package it needs, so these lines go to `pip install --no-deps`.

    python windows_requirements.py 3.8 < requirements-dev.txt > windows-3.8.txt
"""

from __future__ import annotations

import sys

from packaging.requirements import Requirement

WINDOWS = {
    "os_name": "nt",
    "sys_platform": "win32",
    "platform_system": "Windows",
    "platform_machine": "AMD64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def main(version: str) -> None:
    environment = {**WINDOWS, "python_version": version, "python_full_version": f"{version}.0"}
    for line in sys.stdin:
        text = line.split("#", 1)[0].strip()
        if text:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                print(f"{requirement.name}{requirement.specifier}")


if __name__ == "__main__":
    main(sys.argv[1])
