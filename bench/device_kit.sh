#!/usr/bin/env bash
# Here (a machine with the package registries): fetch what the lent GPU machine's image lacks,
# for bench/device_run.sh to install there. Both folders are git-ignored and travel with `carry`.
#   .whl/  pure-Python wheels for its Python 3.12 (its image holds torch, torchvision, numpy,
#          scipy, OpenCV, tensorboard, timm, tqdm, matplotlib, pytest, but not these)
#   .gl/   the GL loader packages (EGL) for pyrender's offscreen rendering (device tool README)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl .gl
pin() { grep -i "^$1==" requirements.txt; }
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  "$(pin smplx)" "$(pin trimesh)" "$(pin pyrender-maintained)" "$(pin PyOpenGL)" \
  "$(pin chumpy-fixed)" freetype-py==2.5.1 pyglet==2.1.19    # pyrender's two missing needs
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
mkdir -p /tmp/amd64/partial
apt-get $o update -qq
(cd .gl && apt-get $o download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh .whl .gl
