#!/usr/bin/env bash
# Regenerate profile_pb2.py from profile.proto (run from anywhere; needs python3 and pip).
#
# Why this exact recipe:
# - grpcio-tools 1.62.3 bundles protoc 25.1, whose Python output ("Protobuf Python Version:
#   4.25.1") imports on every protobuf runtime from 4.21 to 7.x. Newer protoc (>= 26) emits
#   a `runtime_version.ValidateProtobufRuntimeVersion(...)` call that raises ImportError on
#   4.x runtimes and VersionError on any runtime older than the protoc that generated it.
# - The descriptors go into a private DescriptorPool instead of the process-wide default
#   one, so that importing mprofile_ipy never clashes with another package that registers
#   pprof's `perftools.profiles.*` messages itself (ddtrace, google-cloud-profiler, ...):
#   the default pool rejects a second definition of the same symbol with a TypeError.
# tests/test_pprof.py checks that the committed module matches profile.proto.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q "grpcio-tools==1.62.3"
"$tmp/venv/bin/python" -m grpc_tools.protoc -I"$here" --python_out="$tmp" profile.proto
"$tmp/venv/bin/python" - "$tmp/profile_pb2.py" "$here/profile_pb2.py" <<'EOF'
import sys

src, dst = sys.argv[1], sys.argv[2]
text = open(src, encoding="utf-8").read()
old = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
new = (
    "# mprofile-ipy: a private pool (see regenerate_profile_pb2.sh), not the default one.\n"
    "_POOL = _descriptor_pool.DescriptorPool()\n"
    "DESCRIPTOR = _POOL.AddSerializedFile("
)
if text.count(old) != 1:
    sys.exit("unexpected protoc output: cannot find the descriptor pool line")
open(dst, "w", encoding="utf-8").write(text.replace(old, new))
EOF
echo "wrote $here/profile_pb2.py"
