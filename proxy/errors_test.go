package proxy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valyala/fasthttp"

	"regcache/upstream"
)

// docRow is how docs/api.md lists an entry of the table.
func docRow(c *errorCode) string {
	return fmt.Sprintf("| %d | `%s` | %s |", c.status, c.code, c.when)
}

// The errors table in docs/api.md is errTable, row for row: every code a client can get is
// documented with its status, and nothing documented is missing from the code.
func TestErrorTableIsDocumented(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "docs", "api.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(data), "\n## Errors\n")
	if !ok {
		t.Fatal("docs/api.md has no ## Errors section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows []string
	for line := range strings.SplitSeq(section, "\n") {
		if strings.HasPrefix(line, "| ") && !strings.HasPrefix(line, "| status ") {
			rows = append(rows, line)
		}
	}
	var want []string
	for _, c := range errTable {
		want = append(want, docRow(c))
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Fatalf("docs/api.md's errors table differs from errTable; it should read:\n| status | code | when |\n|---|---|---|\n%s", strings.Join(want, "\n"))
	}
}

// fromUpstream is the one rule for what an upstream failure becomes: each kind of failure
// gets its own entry, and so its own status.
func TestFromUpstream(t *testing.T) {
	ue := func(e upstream.Error) error { e.Upstream = "ghcr.io"; return fmt.Errorf("wrapped: %w", &e) }
	for _, tc := range []struct {
		name       string
		err        error
		notFound   *errorCode
		want       *errorCode
		retryAfter time.Duration
	}{
		{"404 without a code", ue(upstream.Error{Kind: upstream.KindNotFound, Status: 404}), errManifestUnknown, errManifestUnknown, 0},
		{"404 naming the repository", ue(upstream.Error{Kind: upstream.KindNotFound, Status: 404, Code: upstream.CodeNameUnknown}), errManifestUnknown, errNameUnknown, 0},
		{"404 naming the blob", ue(upstream.Error{Kind: upstream.KindNotFound, Status: 404, Code: upstream.CodeBlobUnknown}), errNameUnknown, errBlobUnknown, 0},
		{"404 with another code", ue(upstream.Error{Kind: upstream.KindNotFound, Status: 404, Code: "DENIED"}), errBlobUnknown, errBlobUnknown, 0},
		{"denied", ue(upstream.Error{Kind: upstream.KindDenied, Status: 403}), errManifestUnknown, errDenied, 0},
		{"rate limited", ue(upstream.Error{Kind: upstream.KindRateLimited, Status: 429, RetryAfter: 7 * time.Second}), errManifestUnknown, errTooManyRequests, 7 * time.Second},
		{"invalid answer", ue(upstream.Error{Kind: upstream.KindInvalid, Status: 200}), errManifestUnknown, errManifestInvalid, 0},
		{"500", ue(upstream.Error{Kind: upstream.KindUnavailable, Status: 500, RetryAfter: time.Second}), errManifestUnknown, errUpstreamFailed, time.Second},
		{"connection refused", ue(upstream.Error{Kind: upstream.KindUnavailable}), errManifestUnknown, errUpstreamFailed, 0},
		{"credentials refused", ue(upstream.Error{Kind: upstream.KindUnavailable, Status: 401, Credentials: true}), errManifestUnknown, errUpstreamFailed, 0},
		{"503", ue(upstream.Error{Kind: upstream.KindUnavailable, Status: 503, RetryAfter: 3 * time.Second}), errManifestUnknown, errUnavailable, 3 * time.Second},
		{"busy", ue(upstream.Error{Kind: upstream.KindUnavailable, Busy: true, RetryAfter: time.Second}), errManifestUnknown, errUnavailable, time.Second},
		{"breaker open", ue(upstream.Error{Kind: upstream.KindUnavailable, BreakerOpen: true, RetryAfter: 3 * time.Second}), errManifestUnknown, errUnavailable, 3 * time.Second},
		{"timeout", ue(upstream.Error{Kind: upstream.KindUnavailable, Timeout: true}), errManifestUnknown, errUpstreamTimeout, 0},
		{"deadline", fmt.Errorf("fetch: %w", context.DeadlineExceeded), errManifestUnknown, errUpstreamTimeout, 0},
		{"anything else", errors.New("boom"), errManifestUnknown, errUnknown, 0},
		{"already an answer", errTagInvalid.with("bad"), errManifestUnknown, errTagInvalid, 0},
	} {
		got := fromUpstream(tc.err, tc.notFound)
		if got.code != tc.want || got.retryAfter != tc.retryAfter {
			t.Errorf("%s: %d %s (Retry-After %s), want %d %s (Retry-After %s)",
				tc.name, got.code.status, got.code, got.retryAfter, tc.want.status, tc.want, tc.retryAfter)
		}
	}
}

// The wire form: the entry's status, the registry's JSON error body, Retry-After in whole
// seconds rounded up.
func TestWriteError(t *testing.T) {
	var ctx fasthttp.RequestCtx
	writeError(&ctx, errUnavailable.with(`upstream "x" busy`).retryIn(1500*time.Millisecond))
	if got := ctx.Response.StatusCode(); got != fasthttp.StatusServiceUnavailable {
		t.Errorf("status %d, want 503", got)
	}
	if got := string(ctx.Response.Header.Peek("Retry-After")); got != "2" {
		t.Errorf("Retry-After %q, want 2", got)
	}
	if got := string(ctx.Response.Header.ContentType()); got != "application/json" {
		t.Errorf("Content-Type %q", got)
	}
	if got, want := string(ctx.Response.Body()), `{"errors":[{"code":"UNAVAILABLE","message":"upstream \"x\" busy"}]}`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}
	ctx.Response.Reset()
	writeError(&ctx, errHeaderTooLarge.err())
	if got, want := string(ctx.Response.Body()), `{"errors":[{"code":"HEADER_TOO_LARGE","message":"request header too large"}]}`; got != want || ctx.Response.StatusCode() != 431 || ctx.Response.Header.Peek("Retry-After") != nil {
		t.Errorf("%d %s (Retry-After %q), want 431 %s", ctx.Response.StatusCode(), got, ctx.Response.Header.Peek("Retry-After"), want)
	}
}
