#!/usr/bin/env bash
# Regenerates src/bindings.rs from csrc/tagset.h with bindgen's command line
# (`cargo install bindgen-cli`; it needs libclang). The file is checked in,
# as -sys crates ship their bindings, so that building the crate needs no
# bindgen; run this after changing the header.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
bindgen csrc/tagset.h \
    --allowlist-function 'tagset_.*' \
    --allowlist-type 'tagset.*' \
    --rust-target 1.79 \
    -o src/bindings.rs
