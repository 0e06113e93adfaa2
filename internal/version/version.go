// Package version is regcache's one answer to "which build is this?", for `regcache
// version`, the status page and the regcache_build_info metric.
package version

import (
	"runtime/debug"
	"sync"
)

// Version is set at link time for a release build
// (go build -ldflags "-X regcache/internal/version.Version=v1.2.3"). Left empty, String
// reads what the Go toolchain recorded: the module version, or the VCS revision of a
// source build.
var Version string

var read = sync.OnceValue(func() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		return "devel"
	}
	return "devel-" + rev + dirty
})

// String is the build's version: Version, the module version, "devel-<revision>", or
// "devel" when nothing was recorded (go run, go test).
func String() string { return read() }
