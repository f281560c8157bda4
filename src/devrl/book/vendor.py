"""Vendor the browser scripts the book needs (Vega, Vega-Lite, Vega-Embed, MathJax) from the npm
registry into `book/_static/vendor/`, so the website renders charts and equations offline.

Each package is pinned to a version and its npm `integrity` (sha512 of the tarball); a tarball
that does not match is refused. The Vega versions are those Altair and vl-convert use
(`tests/test_book.py` checks that they still agree). Downloads are cached in `~/.cache/devrl/npm`.
Run as `python -m devrl.book.vendor`; it does nothing when the files are already in place.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from devrl.core.base import atomic_write_bytes
from devrl.datasets import repo_root


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball
    files: dict[str, str]  # tarball member (or folder, ending in /) -> path under vendor/

    @property
    def tarball_url(self) -> str:
        return f"https://registry.npmjs.org/{self.name}/-/{self.name}-{self.version}.tgz"


PACKAGES = (
    NpmPackage("vega", "6.2.0",
               "sha512-BIwalIcEGysJdQDjeVUmMWB3e50jPDNAMfLJscjEvpunU9bSt7X1OYnQxkg3uBwuRRI4nWfFZO9u"
               "IW910nLeGw==",
               {"package/build/vega.min.js": "vega.min.js", "package/LICENSE": "LICENSE-vega"}),
    NpmPackage("vega-lite", "6.4.1",
               "sha512-KO3ybHNouRK4A0al/+2fN9UqgTEfxrd/ntGLY933Hg5UOYotDVQdshR3zn7OfXwQ7uj0W96V"
               "fa5R+QxO8am3IQ==",
               {"package/build/vega-lite.min.js": "vega-lite.min.js",
                "package/LICENSE": "LICENSE-vega-lite"}),
    NpmPackage("vega-embed", "7.0.2",
               "sha512-ZHQPWSs9mUTGJPZ5yQVhHV+OLDCoTIjR//De93vG6igZX1MQCVo03ePWlfWCUAnPV1IsKfeJ"
               "LqA3K/Qd11bAFQ==",
               {"package/build/vega-embed.min.js": "vega-embed.min.js",
                "package/LICENSE": "LICENSE-vega-embed"}),
    NpmPackage("mathjax", "3.2.2",
               "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtR"
               "ZM1vO+geW0OhGw==",
               {"package/es5/tex-chtml.js": "mathjax/tex-chtml.js",
                "package/es5/output/chtml/fonts/woff-v2/": "mathjax/output/chtml/fonts/woff-v2/",
                "package/LICENSE": "mathjax/LICENSE"}),
)


def vendor_dir() -> Path:
    return repo_root() / "book" / "_static" / "vendor"


def check_integrity(data: bytes, integrity: str) -> None:
    algorithm, expected = integrity.split("-", 1)
    actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
    if actual != expected:
        raise RuntimeError(f"tarball integrity mismatch: expected {integrity}, "
                           f"got {algorithm}-{actual}")


def fetch_tarball(package: NpmPackage) -> bytes:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "devrl" / "npm"
    cached = cache / f"{package.name}-{package.version}.tgz"
    if cached.exists():
        data = cached.read_bytes()
        try:
            check_integrity(data, package.integrity)
            return data
        except RuntimeError:
            cached.unlink()
    with urllib.request.urlopen(package.tarball_url, timeout=120) as response:
        data = response.read()
    check_integrity(data, package.integrity)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(cached, data)
    return data


def install(package: NpmPackage, dest: Path) -> list[Path]:
    written = []
    with tarfile.open(fileobj=io.BytesIO(fetch_tarball(package)), mode="r:gz") as archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        for source, target in package.files.items():
            chosen = ([(name, target + name[len(source):]) for name in members
                       if name.startswith(source)] if source.endswith("/")
                      else [(source, target)])
            if not chosen or chosen[0][0] not in members:
                raise RuntimeError(f"{package.name}@{package.version} has no {source}")
            for name, relative in chosen:
                path = dest / relative
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(path, archive.extractfile(members[name]).read())
                written.append(path)
    return written


def versions() -> dict[str, str]:
    return {p.name: p.version for p in PACKAGES}


def vendor(dest: Path | None = None) -> Path:
    """Install every package's files into `dest` unless the recorded versions already match."""
    dest = Path(dest) if dest else vendor_dir()
    stamp = dest / "VERSIONS.json"
    if stamp.exists() and json.loads(stamp.read_text()) == versions():
        return dest
    for package in PACKAGES:
        install(package, dest)
    atomic_write_bytes(stamp, json.dumps(versions(), indent=1, sort_keys=True).encode())
    return dest


if __name__ == "__main__":
    print(vendor(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
