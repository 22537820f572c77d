package nodes

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"

	"github.com/overlayd/overlayd/test/cluster"
)

// The images every node has, imported into its containerd.
const (
	// PauseImage is the sandbox image: Kubernetes' own pause, built from
	// the pinned k8s.io/kubernetes (`make node-deps`).
	PauseImage = "registry.k8s.io/pause:3.10.2"
	// BusyboxImage runs test pods: Debian's busybox-static.
	BusyboxImage = "localhost/busybox:1.35"
	// DefaultOverlaydImage is the overlayd image's name unless
	// Options.OverlaydImages says otherwise.
	DefaultOverlaydImage = "overlayd:dev"
)

// entrypointRE finds the image's entrypoint script in the Dockerfile.
var entrypointRE = regexp.MustCompile(`(?s)<<'EOF' /usr/local/bin/overlayd-entrypoint\n(.*?)\nEOF\n`)

// cniPlugins are what the Dockerfile puts in /opt/cni/bin.
var cniPlugins = []string{"flannel", "bridge", "host-local", "loopback", "portmap"}

// buildImages writes the archive of every node's images into dir: the
// overlayd image as the Dockerfile's runtime stage makes it (Debian's
// iptables and iproute2, the overlayd binary, the entrypoint script the
// Dockerfile writes, the CNI plugins), under each of names; pause; busybox.
func buildImages(dir, overlayd string, names []string) (string, error) {
	bins, err := binDir()
	if err != nil {
		return "", err
	}
	deps := filepath.Join(bins, "node")
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		return "", err
	}
	m := entrypointRE.FindSubmatch(dockerfile)
	if m == nil {
		return "", fmt.Errorf("the Dockerfile writes no /usr/local/bin/overlayd-entrypoint")
	}
	entrypoint := filepath.Join(dir, "overlayd-entrypoint")
	if err := os.WriteFile(entrypoint, append(m[1], '\n'), 0o755); err != nil {
		return "", err
	}
	top := Layer{Files: map[string]string{
		"/usr/local/bin/overlayd":            overlayd,
		"/usr/local/bin/overlayd-entrypoint": entrypoint,
	}}
	for _, p := range cniPlugins {
		top.Files["/opt/cni/bin/"+p] = filepath.Join(bins, "cni", p)
	}
	base := Layer{Dir: filepath.Join(deps, "rootfs", "overlayd-base")}
	path := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	var images []Image
	for _, name := range names {
		images = append(images, Image{Name: name, Layers: []Layer{base, top},
			Entrypoint: []string{"/usr/local/bin/overlayd-entrypoint"}, Env: path})
	}
	images = append(images,
		Image{Name: PauseImage, Layers: []Layer{{Files: map[string]string{"/pause": filepath.Join(deps, "pause")}}},
			Entrypoint: []string{"/pause"}},
		Image{Name: BusyboxImage, Layers: []Layer{{Dir: filepath.Join(deps, "rootfs", "busybox")}},
			Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}},
	)
	for _, img := range images {
		for _, l := range img.Layers {
			for _, f := range append(mapValues(l.Files), l.Dir) {
				if _, err := os.Stat(f); f != "" && err != nil {
					return "", fmt.Errorf("image %s: %w: run `make node-deps cni-bins`", img.Name, err)
				}
			}
		}
	}
	archive := filepath.Join(dir, "images.tar")
	if err := WriteArchive(archive, images...); err != nil {
		return "", fmt.Errorf("building the images: %w", err)
	}
	return archive, nil
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

// BuildOverlayd builds ./cmd/overlayd into dir as the Dockerfile does
// (static, trimmed paths) and returns its path.
func BuildOverlayd(dir string) (string, error) {
	root, err := cluster.RepoRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "overlayd")
	cmd := exec.Command("go", "build", "-trimpath",
		"-ldflags", "-X github.com/overlayd/overlayd/pkg/version.Version=test-nodes", "-o", bin, "./cmd/overlayd")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building overlayd: %v\n%s", err, out)
	}
	return bin, nil
}
