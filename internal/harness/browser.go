package harness

// A real browser for the pages regcache serves: Debian's chromium, headless, reading the
// DOM as rendered or taking a screenshot. .ci/test installs it.

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// browserTimeout bounds one chromium run: a page that never finishes loading fails the
// test rather than hanging it.
const browserTimeout = 60 * time.Second

// Chromium runs headless chromium with args, as root in a container can, reaching nothing
// beyond 127.0.0.1: every other host goes to a proxy on a closed port (loopback is never
// proxied) and resolves to nothing, and its background services are off. It returns what
// chromium wrote to stdout; a failure fails the test.
func Chromium(t testing.TB, args ...string) string {
	t.Helper()
	bin := Tool(t, "chromium", "apt-get install chromium")
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-default-apps", "--disable-extensions", "--disable-breakpad", "--no-default-browser-check",
		"--disable-domain-reliability", "--hide-scrollbars", "--mute-audio",
		"--proxy-server=http://127.0.0.1:9", `--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1`,
		"--user-data-dir=" + t.TempDir(),
	}
	ctx, cancel := context.WithTimeout(context.Background(), browserTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	var out, errs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errs
	if err := cmd.Run(); err != nil {
		t.Fatalf("chromium %v: %v (within %s)\n%s", args, err, browserTimeout, errs.String())
	}
	return out.String()
}

// RenderedDOM is the page at url as chromium renders it (the DOM serialized after load).
func RenderedDOM(t testing.TB, url string) string {
	t.Helper()
	return Chromium(t, "--dump-dom", url)
}

// Screenshot writes a PNG of the page at url, at width x height, to file.
func Screenshot(t testing.TB, url, file string, width, height int) {
	t.Helper()
	abs, err := filepath.Abs(file)
	if err != nil {
		t.Fatal(err)
	}
	Chromium(t, "--screenshot="+abs, "--window-size="+strconv.Itoa(width)+","+strconv.Itoa(height), url)
	if st, err := os.Stat(abs); err != nil || st.Size() == 0 {
		t.Fatalf("chromium wrote no screenshot to %s: %v", abs, err)
	}
}
