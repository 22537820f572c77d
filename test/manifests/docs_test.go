package manifests

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// docExample is a kustomization shown in the documentation.
type docExample struct {
	name string // "<file>, example <n>"
	dir  string // a temporary directory holding it as kustomization.yaml
}

// yamlBlock finds fenced YAML blocks in Markdown.
var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// remoteBase is how the documentation refers to this repository's
// kustomizations; the examples are rendered against the working tree.
var remoteBase = regexp.MustCompile(`https://github\.com/overlayd/overlayd//(Documentation[^?\s]*)\?ref=<release>`)

// docExamples writes every kustomization shown in Documentation/*.md into
// a directory of its own, its references to this repository pointing at
// the working tree, so that the examples are rendered and applied like
// the shipped kustomizations.
func docExamples(t testing.TB) []docExample {
	t.Helper()
	root, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}
	var out []docExample
	err = filepath.WalkDir(repoPath("Documentation"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".md" {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, p)
		n := 0
		for _, m := range yamlBlock.FindAllStringSubmatch(string(data), -1) {
			if !strings.Contains(m[1], "kind: Kustomization") {
				continue
			}
			n++
			dir := t.TempDir()
			var relErr error
			k := remoteBase.ReplaceAllStringFunc(m[1], func(url string) string {
				// kustomize takes only relative paths to other kustomizations.
				local, err := filepath.Rel(dir, filepath.Join(root, filepath.FromSlash(remoteBase.FindStringSubmatch(url)[1])))
				if err != nil {
					relErr = err
				}
				return filepath.ToSlash(local)
			})
			if relErr != nil {
				return relErr
			}
			if strings.Contains(k, "github.com/overlayd") {
				t.Errorf("%s: an example refers to this repository other than as %s", rel, remoteBase)
			}
			if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o644); err != nil {
				return err
			}
			out = append(out, docExample{name: filepath.ToSlash(rel) + ", example " + string(rune('0'+n)), dir: dir})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < 3 {
		t.Fatalf("found %d kustomization examples in Documentation/*.md, expected those of kubernetes.md, backends.md and canal/README.md", len(out))
	}
	return out
}
