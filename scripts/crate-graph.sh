#!/usr/bin/env bash
# Draws the workspace's crates and the dependencies between them (from `cargo metadata`) as a
# mermaid block and writes it into README.md between the crate-graph markers.
# `scripts/crate-graph.sh --check` fails instead when the README's picture is stale.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --no-deps --offline 2>/dev/null >/tmp/qleet-metadata.$$.json ||
  cargo metadata --format-version 1 --no-deps >/tmp/qleet-metadata.$$.json
trap 'rm -f /tmp/qleet-metadata.$$.json' EXIT
python3 - "$@" /tmp/qleet-metadata.$$.json <<'PY'
import json, sys
check = "--check" in sys.argv[1:-1]
meta = json.load(open(sys.argv[-1]))
names = {p["name"] for p in meta["packages"]}
lines = ["```mermaid", "graph TD"]
ident = lambda n: n.replace("-", "_")
for p in sorted(meta["packages"], key=lambda p: p["name"]):
    lines.append(f'    {ident(p["name"])}["{p["name"]}"]')
for p in sorted(meta["packages"], key=lambda p: p["name"]):
    edges = {}
    for d in p["dependencies"]:
        if d["name"] in names and d["name"] != p["name"]:
            kind = d["kind"] or "normal"
            # A normal dependency wins over a dev- or build-only one of the same crate.
            if edges.get(d["name"]) != "normal":
                edges[d["name"]] = kind
    for dep, kind in sorted(edges.items()):
        arrow = "-->" if kind == "normal" else "-.->|dev|"
        lines.append(f'    {ident(p["name"])} {arrow} {ident(dep)}')
lines.append("```")
block = "\n".join(lines)
begin, end = "<!-- crate-graph:begin (scripts/crate-graph.sh) -->", "<!-- crate-graph:end -->"
readme = open("README.md").read()
if begin not in readme or end not in readme:
    sys.exit("README.md has no crate-graph markers")
head, rest = readme.split(begin, 1)
_, tail = rest.split(end, 1)
updated = f"{head}{begin}\n{block}\n{end}{tail}"
if check:
    if updated != readme:
        sys.exit("README.md's crate graph is stale: run scripts/crate-graph.sh")
else:
    open("README.md", "w").write(updated)
PY
