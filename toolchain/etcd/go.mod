// Wrapper module for building the etcd 3.5 server binary.
// go.etcd.io/etcd/server/v3 has replace directives in its own go.mod, so
// `go install module@version` refuses it; requiring it from here works.
// scripts/toolchain copies this file into the cache, rewrites the version
// from toolchain/slipway_toolchain.py and lets the go command fill in go.sum.
module slipway.local/toolchain/etcd

go 1.23.0

require go.etcd.io/etcd/server/v3 v3.5.21
