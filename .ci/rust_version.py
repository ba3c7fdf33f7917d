#!/usr/bin/env python3
"""Checks that `rust-version` in Cargo.toml is true: no package in Cargo.lock declares a newer
minimum Rust. (The README states the same version; a user with an older toolchain would
otherwise meet a build error where the README promised a build.)"""

import json
import re
import subprocess
import sys


def parse(version):
    parts = [int(p) for p in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    meta = json.loads(subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"],
                                     check=True, capture_output=True, text=True).stdout)
    ours = next(p for p in meta["packages"] if p["id"] in meta["workspace_members"])
    stated = ours.get("rust_version")
    if not stated:
        sys.exit("Cargo.toml states no rust-version")
    needs = [(p["rust_version"], p["name"], p["version"]) for p in meta["packages"] if p.get("rust_version")]
    over = [n for n in needs if parse(n[0]) > parse(stated)]
    if over:
        sys.exit(f"rust-version {stated} is not enough: " + ", ".join(f"{n} {v} needs {r}" for r, n, v in over))
    readme = open("README.md").read()
    if not re.search(rf"Rust {re.escape(stated)} or newer", readme):
        sys.exit(f"the README does not say 'Rust {stated} or newer'")
    highest = max(needs, key=lambda n: parse(n[0]))
    print(f"rust-version {stated}: enough for every locked package (the highest need: {highest[1]} {highest[2]}, {highest[0]})")


if __name__ == "__main__":
    main()
