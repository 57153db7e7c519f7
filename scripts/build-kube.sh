#!/usr/bin/env bash
# Build a real Kubernetes control plane (kube-apiserver, kube-scheduler, kube-controller-manager
# 1.20.2) from Debian bookworm's `kubernetes` source package, for the Kubernetes-backend tests.
# No kind/minikube/k3s can run on our machines (no Docker engine, no Go proxy); this can.
# The binaries are cached outside the repository ($KUBE_CACHE, default ~/.cache/airflow-mlops/kube)
# and reused on later runs; a clean build takes about 7 minutes on 2 cores.
set -euo pipefail
CACHE=${KUBE_CACHE:-$HOME/.cache/airflow-mlops/kube-1.20.2}
BIN="$CACHE/bin"
if [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-scheduler" ] && [ -x "$BIN/kube-controller-manager" ] && command -v etcd >/dev/null; then
  echo "kube binaries cached in $BIN"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
echo "==> installing the Go toolchain and etcd from Debian"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq golang-go etcd-server rsync golang-github-modern-go-reflect2-dev >/dev/null
if ! grep -rqs "deb-src" /etc/apt/sources.list.d/airflow-mlops-src.sources; then
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    | $SUDO tee /etc/apt/sources.list.d/airflow-mlops-src.sources >/dev/null
  $SUDO apt-get update -qq
fi
WORK="$CACHE/src"
rm -rf "$WORK" && mkdir -p "$WORK" && cd "$WORK"
echo "==> fetching Debian's kubernetes source package"
apt-get source --download-only kubernetes >/dev/null
tar xzf kubernetes_*.orig.tar.gz
TREE=$(find . -maxdepth 1 -type d -name 'kubernetes-*' | head -1)
# The vendored reflect2 does not build with Go 1.19; Debian's packaged copy does.
rm -rf "$TREE/vendor/github.com/modern-go/reflect2"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$TREE/vendor/github.com/modern-go/reflect2"
rm -f "$TREE/vendor/github.com/modern-go/reflect2/go.mod"
export GOPATH="$WORK/gopath" GO111MODULE=off CGO_ENABLED=0 GOFLAGS=-mod=vendor
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$(cd "$TREE" && pwd)" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
echo "==> generating OpenAPI definitions"
GOFLAGS= make gen_openapi >/dev/null
LDFLAGS="-s -w -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=v1.20.2 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1 -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20"
mkdir -p "$BIN"
for cmd in kube-apiserver kube-scheduler kube-controller-manager; do
  echo "==> building $cmd"
  GOFLAGS= go build -ldflags "$LDFLAGS" -o "$BIN/$cmd" "./cmd/$cmd"
done
rm -rf "$WORK"
echo "kube binaries built in $BIN"
