// Command etcd is upstream etcd's server, built from its Go module
// (`go install go.etcd.io/etcd/server/v3@…` fails on etcd's own replace lines).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
