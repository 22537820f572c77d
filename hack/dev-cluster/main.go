// Command dev-cluster is `make dev-cluster`: a local cluster for developing
// without a container engine, from the same lab as the tests (test/nodes):
// a real control plane and kubelet + containerd nodes in network
// namespaces, with the overlayd image built from this tree imported into
// every node. It writes a kubeconfig, says it is ready, and runs until it
// gets SIGTERM or SIGINT (`make dev-cluster-down`), then removes
// everything.
//
//	dev-cluster -dir .cache/dev-cluster [-nodes 3] [-overlayd bin/overlayd]
//	dev-cluster -sweep    # remove what a crashed dev cluster left
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/overlayd/overlayd/test/nodes"
)

// prefix names the dev cluster's namespaces and cgroups.
const prefix = "ovlDev"

func main() {
	dir := flag.String("dir", ".cache/dev-cluster", "state directory: kubeconfig, ready, the cluster's files")
	count := flag.Int("nodes", 3, "kubelet nodes")
	overlayd := flag.String("overlayd", "", "the overlayd binary the image holds (default: built from this tree)")
	sweep := flag.Bool("sweep", false, "remove what a crashed dev cluster left, then exit")
	flag.Parse()
	if *sweep {
		removed, err := nodes.Sweep(prefix)
		for _, r := range removed {
			fmt.Println("removed", r)
		}
		if err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(*dir, *count, *overlayd); err != nil {
		log.Fatal(err)
	}
}

func run(dir string, count int, overlayd string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	ready := filepath.Join(dir, "ready")
	os.Remove(ready)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	c, err := nodes.Start(context.Background(), nodes.Options{
		Prefix: prefix, Nodes: count, Overlayd: overlayd, Dir: filepath.Join(dir, "cluster"),
		// The names the shipped manifest and the chart use, and kind's.
		OverlaydImages: []string{"ghcr.io/overlayd/overlayd:v0.1.0", nodes.DefaultOverlaydImage},
		Logf:           log.Printf,
	})
	if err != nil {
		return err
	}
	defer func() {
		log.Print("removing the dev cluster")
		if err := c.Close(); err != nil {
			log.Print(err)
		}
		os.Remove(ready)
		log.Print("dev cluster removed")
	}()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	data, err := os.ReadFile(c.Kubeconfig)
	if err == nil {
		err = os.WriteFile(kubeconfig, data, 0o600)
	}
	if err != nil {
		return err
	}
	if err := os.WriteFile(ready, []byte(kubeconfig+"\n"), 0o644); err != nil {
		return err
	}
	log.Printf("dev cluster ready: %d nodes, KUBECONFIG=%s", count, kubeconfig)
	<-stop
	return nil
}
