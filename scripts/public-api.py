#!/usr/bin/env python3
"""The public API of larder's crates, reduced to item paths, checked into api/.

    python3 scripts/public-api.py            # compare with api/*.txt; exit 1 on a difference
    python3 scripts/public-api.py --bless    # rewrite api/*.txt
    python3 scripts/public-api.py --counts   # also print the counts per crate

Builds rustdoc JSON on stable (RUSTC_BOOTSTRAP=1 enables `--output-format json`) and walks
each crate from its root: every public module, type, trait, function, constant, variant,
field and method that a user can name, one line per path (an item re-exported at the root
appears under both paths). cargo-public-api does the same with signatures but needs a
nightly toolchain, which this machine cannot install.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CRATES = [
    # (package, features)
    ("larder-core", ["--all-features"]),
    ("larder-native", ["--all-features"]),
    ("larder-edge", ["--all-features"]),
    ("larder", ["--all-features"]),
]


def rustdoc_json(package):
    features = dict(CRATES)[package]
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    subprocess.run(
        ["cargo", "rustdoc", "-q", "-p", package, "--lib", *features, "--",
         "-Z", "unstable-options", "--output-format", "json"],
        cwd=ROOT, env=env, check=True,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return json.loads((target / "doc" / (package.replace("-", "_") + ".json")).read_text())


def walk(doc):
    """Yields (kind, path, item id or None) for everything public reachable from the root."""
    index = doc["index"]
    paths = doc["paths"]
    seen_modules = set()

    def item(i):
        return index.get(str(i)) or index.get(i)

    def public(it):
        return it.get("visibility") == "public"

    def members(kind_name, it, path):
        inner = it["inner"][kind_name]
        if kind_name == "struct":
            fields = inner.get("kind", {})
            plain = fields.get("plain", {}) if isinstance(fields, dict) else {}
            for f in plain.get("fields", []):
                fi = item(f)
                if fi and public(fi):
                    yield ("field", f"{path}::{fi['name']}", f)
        if kind_name == "enum":
            for v in inner.get("variants", []):
                vi = item(v)
                if vi:
                    yield ("variant", f"{path}::{vi['name']}", v)
        if kind_name == "trait":
            for m in inner.get("items", []):
                mi = item(m)
                if mi:
                    k = next(iter(mi["inner"]))
                    yield ("trait " + k.replace("assoc_", ""), f"{path}::{mi['name']}", m)
        for impl_id in inner.get("impls", []):
            impl = item(impl_id)
            if not impl:
                continue
            imp = impl["inner"]["impl"]
            if imp.get("trait") is not None or imp.get("is_synthetic") or imp.get("blanket_impl"):
                continue
            for m in imp.get("items", []):
                mi = item(m)
                if mi and public(mi):
                    k = next(iter(mi["inner"]))
                    yield ("method" if k == "function" else k, f"{path}::{mi['name']}", m)

    def visit(module_id, path):
        if (module_id, path) in seen_modules:
            return
        seen_modules.add((module_id, path))
        mod = item(module_id)
        for child_id in mod["inner"]["module"]["items"]:
            child = item(child_id)
            if child is None or not public(child):
                continue
            kind = next(iter(child["inner"]))
            if kind == "use":
                use = child["inner"]["use"]
                target = use.get("id")
                target_item = item(target) if target is not None else None
                if use.get("is_glob"):
                    if target_item is not None and "module" in target_item["inner"]:
                        visit(target, path)
                    else:
                        yield ("use", f"{path}::* (from {use['source']})", None)
                    continue
                name = use["name"]
                if target_item is None:
                    # An item of another crate.
                    yield ("use", f"{path}::{name} (from {use['source']})", None)
                    continue
                target_kind = next(iter(target_item["inner"]))
                child_path = f"{path}::{name}"
                if target_kind == "module":
                    yield ("mod", child_path, target)
                    yield from visit(target, child_path)
                else:
                    yield (target_kind, child_path, target)
                    if target_kind in ("struct", "enum", "trait", "union"):
                        yield from members(target_kind, target_item, child_path)
                continue
            child_path = f"{path}::{child['name']}"
            if kind == "module":
                yield ("mod", child_path, child_id)
                yield from visit(child_id, child_path)
                continue
            if kind == "impl":
                continue
            yield (kind, child_path, child_id)
            if kind in ("struct", "enum", "trait", "union"):
                yield from members(kind, child, child_path)

    root = doc["root"]
    name = item(root)["name"]
    yield from visit(root, name)


def counts(entries):
    """Distinct items by kind (an item re-exported twice counts once), plus stats and errors."""
    by_kind = {}
    for kind, path, item_id in entries:
        key = item_id if item_id is not None else path
        by_kind.setdefault(kind, set()).add(key)
    types = {p.split("::")[-1] for k, p, _ in entries if k in ("struct", "enum", "type_alias")}
    return {
        "types": len(by_kind.get("struct", set()) | by_kind.get("enum", set())
                     | by_kind.get("type_alias", set())),
        "traits": len(by_kind.get("trait", set())),
        "functions": len(by_kind.get("function", set())),
        "methods": len(by_kind.get("method", set()) | by_kind.get("trait function", set())),
        "stats types": len({t for t in types if "Stats" in t}),
        "error types": len({t for t in types if t.endswith("Error") or t == "Refusal"}),
        "lines": len({p for _, p, _ in entries}),
    }


def main():
    bless = "--bless" in sys.argv
    show_counts = "--counts" in sys.argv
    out_dir = ROOT / "api"
    out_dir.mkdir(exist_ok=True)
    differ = []
    for package, _ in CRATES:
        entries = list(walk(rustdoc_json(package)))
        text = "".join(sorted({f"{k} {p}\n" for k, p, _ in entries}))
        path = out_dir / f"{package}.txt"
        if show_counts:
            print(package, json.dumps(counts(entries)))
        if bless:
            path.write_text(text)
        elif not path.exists() or path.read_text() != text:
            differ.append(package)
            old = path.read_text().splitlines() if path.exists() else []
            new = text.splitlines()
            for line in sorted(set(old) - set(new)):
                print(f"- {line}")
            for line in sorted(set(new) - set(old)):
                print(f"+ {line}")
    if differ:
        print(f"the public API of {', '.join(differ)} changed: review the lines above, then "
              "run python3 scripts/public-api.py --bless and commit api/", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
