package nodes

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// No registry is reachable here: images are built on the spot as
// docker-save archives (what `docker save` writes, which
// `ctr images import` reads) from directories and files, one layer each.

// Image describes an image to build.
type Image struct {
	Name       string  // e.g. "ghcr.io/overlayd/overlayd:v0.1.0"
	Layers     []Layer // bottom first
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// Layer is a directory tree (Dir, taken as the image's /) plus single
// files (Files: path in the image -> file on the host, mode kept).
type Layer struct {
	Dir   string
	Files map[string]string
}

// layerMTime is every file's modification time: an image built twice from
// the same files is the same image.
var layerMTime = time.Unix(0, 0)

// WriteArchive writes the images into one docker-save archive at path.
func WriteArchive(path string, images ...Image) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(f)
	type entry struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	var manifest []entry
	written := map[string]bool{}
	for _, img := range images {
		var diffIDs, layerFiles []string
		for i, l := range img.Layers {
			id, err := writeLayer(tw, l, written)
			if err != nil {
				return fmt.Errorf("image %s, layer %d: %w", img.Name, i, err)
			}
			diffIDs = append(diffIDs, "sha256:"+id)
			layerFiles = append(layerFiles, id+"/layer.tar")
		}
		config, err := json.Marshal(map[string]any{
			"architecture": runtime.GOARCH,
			"os":           "linux",
			"created":      layerMTime.UTC().Format(time.RFC3339),
			"config":       map[string]any{"Entrypoint": img.Entrypoint, "Cmd": img.Cmd, "Env": img.Env},
			"rootfs":       map[string]any{"type": "layers", "diff_ids": diffIDs},
		})
		if err != nil {
			return err
		}
		sum := sha256.Sum256(config)
		name := hex.EncodeToString(sum[:]) + ".json"
		if err := addFile(tw, name, config); err != nil {
			return err
		}
		manifest = append(manifest, entry{Config: name, RepoTags: []string{img.Name}, Layers: layerFiles})
	}
	data, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	if err := addFile(tw, "manifest.json", data); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return f.Close()
}

func addFile(tw *tar.Writer, name string, data []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), ModTime: layerMTime, Typeflag: tar.TypeReg}); err != nil {
		return err
	}
	_, err := tw.Write(data)
	return err
}

// writeLayer builds the layer's tar in a temporary file, then adds it to
// the archive under its digest (once, if images share it).
func writeLayer(tw *tar.Writer, l Layer, written map[string]bool) (string, error) {
	tmp, err := os.CreateTemp("", "overlayd-layer-*.tar")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	if err := layerTar(io.MultiWriter(tmp, h), l); err != nil {
		return "", err
	}
	id := hex.EncodeToString(h.Sum(nil))
	if written[id] {
		return id, nil
	}
	written[id] = true
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return "", err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	if err := tw.WriteHeader(&tar.Header{Name: id + "/layer.tar", Mode: 0o644, Size: size, ModTime: layerMTime, Typeflag: tar.TypeReg}); err != nil {
		return "", err
	}
	_, err = io.Copy(tw, tmp)
	return id, err
}

func layerTar(w io.Writer, l Layer) error {
	tw := tar.NewWriter(w)
	dirs := map[string]bool{}
	if l.Dir != "" {
		err := filepath.WalkDir(l.Dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, err := filepath.Rel(l.Dir, p)
			if err != nil || rel == "." {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			link := ""
			if info.Mode()&fs.ModeSymlink != 0 {
				if link, err = os.Readlink(p); err != nil {
					return err
				}
			}
			hdr, err := tar.FileInfoHeader(info, link)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			hdr.Name = filepath.ToSlash(rel)
			if d.IsDir() {
				hdr.Name += "/"
				dirs[rel] = true
			}
			hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = layerMTime, time.Time{}, time.Time{}
			hdr.Uname, hdr.Gname = "", ""
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if info.Mode().IsRegular() {
				return copyInto(tw, p)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	var paths []string
	for p := range l.Files {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		rel := strings.TrimPrefix(filepath.Clean(p), "/")
		// Parent directories the layer does not have yet.
		parts := strings.Split(filepath.Dir(rel), "/")
		for i := range parts {
			d := filepath.Join(parts[:i+1]...)
			if d == "." || dirs[d] {
				continue
			}
			dirs[d] = true
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Mode: 0o755, ModTime: layerMTime, Typeflag: tar.TypeDir}); err != nil {
				return err
			}
		}
		info, err := os.Stat(l.Files[p])
		if err != nil {
			return err
		}
		hdr := &tar.Header{Name: rel, Mode: int64(info.Mode().Perm()), Size: info.Size(), ModTime: layerMTime, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if err := copyInto(tw, l.Files[p]); err != nil {
			return err
		}
	}
	return tw.Close()
}

func copyInto(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
