// Package version holds the build version, set by the linker:
//
//	go build -ldflags "-X github.com/overlayd/overlayd/pkg/version.Version=v0.1.0"
package version

// Version is the overlayd release; "dev" for builds outside `make build`.
var Version = "dev"
