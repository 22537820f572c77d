package cluster

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// module is the repository's Go module.
const module = "github.com/overlayd/overlayd"

// RepoRoot is the repository containing the working directory: the
// nearest directory above it whose go.mod is overlayd's module.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if isModuleRoot(dir) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cluster: no go.mod of " + module + " above the working directory; run from the repository")
		}
		dir = parent
	}
}

func isModuleRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(name), `"`) == module
		}
	}
	return false
}

// BuildOverlayd builds ./cmd/overlayd of the repository into a new
// temporary directory, with extra `go build` flags (e.g. -trimpath), and
// returns the binary and a function that removes it.
func BuildOverlayd(flags ...string) (bin string, remove func(), err error) {
	root, err := RepoRoot()
	if err != nil {
		return "", nil, err
	}
	dir, err := os.MkdirTemp("", "overlayd-bin-")
	if err != nil {
		return "", nil, err
	}
	remove = func() { os.RemoveAll(dir) }
	bin = filepath.Join(dir, "overlayd")
	args := append(append([]string{"build"}, flags...), "-o", bin, "./cmd/overlayd")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		remove()
		return "", nil, fmt.Errorf("building overlayd: %v\n%s", err, out)
	}
	return bin, remove, nil
}
