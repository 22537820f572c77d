package manifests

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
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

// mdLink finds Markdown links: [text](target).
var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// headingSlug is the anchor GitHub gives a heading: lower case, only
// letters, digits, spaces, hyphens and underscores kept, spaces as hyphens.
func headingSlug(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

func anchors(t *testing.T, p string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if !inFence && strings.HasPrefix(line, "#") {
			out[headingSlug(strings.TrimLeft(line, "#"))] = true
		}
	}
	return out
}

// TestDocLinks: every relative link in Documentation/ leads to a file that
// exists, and every #anchor to a heading of that file.
func TestDocLinks(t *testing.T) {
	err := filepath.WalkDir(repoPath("Documentation"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(p) != ".md" {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(data), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			dest := p
			if file != "" {
				dest = filepath.Join(filepath.Dir(p), filepath.FromSlash(file))
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s: link %s: %v", p, target, err)
					continue
				}
			}
			if anchor != "" && filepath.Ext(dest) == ".md" && !anchors(t, dest)[anchor] {
				t.Errorf("%s: link %s: no heading #%s in %s", p, target, anchor, dest)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestArchitecturePackageMap: the package table of
// Documentation/architecture.md names exactly the packages `go list ./...`
// lists, so a newcomer's map of the code is the code.
func TestArchitecturePackageMap(t *testing.T) {
	data, err := os.ReadFile(repoPath("Documentation/architecture.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, ok := strings.Cut(string(data), "\n## Packages\n")
	if !ok {
		t.Fatal("architecture.md has no \"## Packages\" section")
	}
	table, _, _ = strings.Cut(table, "\n## ")
	documented := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		first, _, ok := strings.Cut(strings.TrimPrefix(line, "|"), "|")
		if !ok || !strings.HasPrefix(line, "|") {
			continue
		}
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(first, -1) {
			documented[m[1]] = true
		}
	}
	cmd := exec.Command("go", "list", "./...")
	cmd.Dir = repoRoot
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list ./...: %v", err)
	}
	listed := map[string]bool{}
	for _, pkg := range strings.Fields(string(out)) {
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, "github.com/overlayd/overlayd"), "/")
		if rel == "" || strings.Contains(rel, "/internal/") {
			continue // the module root has no package; internal ones belong to their parent's row
		}
		listed[rel] = true
		if !documented[rel] {
			t.Errorf("package %s is not in the package map of architecture.md", rel)
		}
	}
	for p := range documented {
		if !listed[p] {
			t.Errorf("architecture.md maps %s, which `go list ./...` does not list", p)
		}
	}
}
