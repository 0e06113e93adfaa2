package upstream

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// The manifest media types every update checker meets.
const (
	MediaTypeDockerList     = "application/vnd.docker.distribution.manifest.list.v2+json"
	MediaTypeDockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeOCIIndex       = ocispec.MediaTypeImageIndex
	MediaTypeOCIManifest    = ocispec.MediaTypeImageManifest
)

// AcceptManifests is sent on every manifest request: whatever the client accepts, upstream
// may answer with any list or manifest type, so a registry that moved to OCI (lscr.io) never
// answers 404 because an old client left a type out.
const AcceptManifests = MediaTypeDockerList + ", " + MediaTypeOCIIndex + ", " + MediaTypeDockerManifest + ", " + MediaTypeOCIManifest

// Descriptor names a manifest by content: what a HEAD tells.
type Descriptor struct {
	MediaType string
	Digest    digest.Digest
	Size      int64
}

// Manifest is a Descriptor and, after a GET, its body (verified against Digest).
type Manifest struct {
	Descriptor
	// Body is nil when only the descriptor was fetched.
	Body []byte
}

// HeadManifest asks for ref's descriptor with a HEAD (free on Docker Hub). When upstream's
// answer lacks Docker-Content-Digest, a size or a media type, it asks with GET instead and
// the result then carries the body too.
func (r *Registry) HeadManifest(ctx context.Context, repo, ref string) (_ Manifest, err error) {
	probe, err := r.enter()
	if err != nil {
		return Manifest{}, err
	}
	defer func(caller context.Context) { r.leave(caller, probe, err) }(ctx)
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	resp, err := r.do(ctx, http.MethodHead, repo, "manifests/"+ref, AcceptManifests)
	if err != nil {
		return Manifest{}, err
	}
	// Closed before a fallback GET: that needs a slot of its own (slots.go), and this answer
	// must not hold one meanwhile.
	drainClose(resp)
	if err := r.checkResponse(resp); err != nil {
		return Manifest{}, err
	}
	dg, err := digest.Parse(resp.Header.Get("Docker-Content-Digest"))
	mt := contentType(resp.Header.Get("Content-Type"))
	if err != nil || genericType(mt) || resp.ContentLength < 0 {
		return r.getManifest(ctx, repo, ref)
	}
	if want, err := digest.Parse(ref); err == nil && want != dg {
		return Manifest{}, r.invalid("HEAD %s answered digest %s", ref, dg)
	}
	if resp.ContentLength > MaxManifestSize {
		return Manifest{}, r.tooLarge(resp.ContentLength)
	}
	return Manifest{Descriptor: Descriptor{MediaType: mt, Digest: dg, Size: resp.ContentLength}}, nil
}

// GetManifest fetches ref's manifest and verifies the body against the digest asked for
// (ref, when it is one) and the digest upstream claims (Docker-Content-Digest).
func (r *Registry) GetManifest(ctx context.Context, repo, ref string) (_ Manifest, err error) {
	probe, err := r.enter()
	if err != nil {
		return Manifest{}, err
	}
	defer func(caller context.Context) { r.leave(caller, probe, err) }(ctx)
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.getManifest(ctx, repo, ref)
}

func (r *Registry) getManifest(ctx context.Context, repo, ref string) (Manifest, error) {
	resp, err := r.do(ctx, http.MethodGet, repo, "manifests/"+ref, AcceptManifests)
	if err != nil {
		return Manifest{}, err
	}
	defer drainClose(resp)
	if err := r.checkResponse(resp); err != nil {
		return Manifest{}, err
	}
	if resp.ContentLength > MaxManifestSize {
		return Manifest{}, r.tooLarge(resp.ContentLength)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxManifestSize+1))
	if err != nil {
		return Manifest{}, r.unavailable(err, "reading manifest")
	}
	if len(body) > MaxManifestSize {
		return Manifest{}, r.tooLarge(int64(len(body)))
	}
	return r.verifyManifest(ref, resp.Header, body)
}

// verifyManifest is the one gate every manifest body passes before anyone may cache or
// serve it.
func (r *Registry) verifyManifest(ref string, h http.Header, body []byte) (Manifest, error) {
	var got digest.Digest
	if want, err := digest.Parse(ref); err == nil {
		if !want.Algorithm().Available() || want.Algorithm().FromBytes(body) != want {
			return Manifest{}, r.invalid("manifest body does not match the digest asked for (%s)", want)
		}
		got = want
	}
	if v := h.Get("Docker-Content-Digest"); v != "" {
		claimed, err := digest.Parse(v)
		if err != nil {
			return Manifest{}, r.invalid("unparsable Docker-Content-Digest %q", v)
		}
		if !claimed.Algorithm().Available() || claimed.Algorithm().FromBytes(body) != claimed {
			return Manifest{}, r.invalid("manifest body does not match its Docker-Content-Digest %s", claimed)
		}
		if got != "" && claimed != got && claimed.Algorithm() == got.Algorithm() {
			return Manifest{}, r.invalid("Docker-Content-Digest %s differs from %s", claimed, got)
		}
		if got == "" {
			got = claimed
		}
	}
	if got == "" {
		got = digest.Canonical.FromBytes(body)
	}
	mt, why := ManifestType(body, contentType(h.Get("Content-Type")))
	if why != "" {
		return Manifest{}, r.invalid("%s", why)
	}
	return Manifest{Descriptor: Descriptor{MediaType: mt, Digest: got, Size: int64(len(body))}, Body: body}, nil
}

// ManifestType is the check every manifest body passes, from upstream or read back from a
// shared tier: a JSON object (not null, an array or a scalar: those would be cached and
// served as a manifest), whose own mediaType, when it names one, agrees with mt, the type
// it came with. A generic or empty mt defers to the body's mediaType. It returns the type
// to serve the body as (one that may go out as a Content-Type), or why the body is none.
func ManifestType(body []byte, mt string) (string, string) {
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	trimmed := bytes.TrimLeft(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' || json.Unmarshal(body, &probe) != nil {
		return "", "manifest is not a JSON object"
	}
	switch {
	case genericType(mt):
		mt = probe.MediaType
	case probe.MediaType != "" && probe.MediaType != mt:
		return "", "manifest's own mediaType contradicts its Content-Type " + mt
	}
	if mt == "" {
		return "", "manifest has no media type"
	}
	if !ValidMediaType(mt) {
		return "", "manifest's mediaType is not a type/subtype"
	}
	return mt, ""
}

// ValidMediaType accepts what may go out as a Content-Type: type/subtype in lower case,
// no parameters, nothing else.
func ValidMediaType(mt string) bool {
	if mt == "" || len(mt) > 255 {
		return false
	}
	parsed, params, err := mime.ParseMediaType(mt)
	return err == nil && len(params) == 0 && parsed == strings.ToLower(mt)
}

func (r *Registry) tooLarge(n int64) error {
	return &Error{Kind: KindInvalid, Upstream: r.name, TooLarge: true,
		Message: "manifest of " + strconv.FormatInt(n, 10) + " bytes exceeds the 4 MiB limit"}
}

// contentType strips parameters ("; charset=utf-8") from a Content-Type.
func contentType(v string) string {
	if v == "" {
		return ""
	}
	mt, _, err := mime.ParseMediaType(v)
	if err != nil {
		return ""
	}
	return mt
}

// genericType reports a Content-Type that says nothing about which manifest this is.
func genericType(mt string) bool {
	switch mt {
	case "", "application/octet-stream", "text/plain", "application/json", "binary/octet-stream":
		return true
	}
	return false
}

// ValidTag reports whether s is a tag in the distribution spec's grammar,
// [a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}. It takes the proxy's request bytes without a copy
// and the cache's strings alike.
func ValidTag[T ~string | ~[]byte](s T) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		b := s[i]
		ok := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
		if !ok && i > 0 {
			ok = b == '.' || b == '-'
		}
		if !ok {
			return false
		}
	}
	return true
}

// ValidRepository reports whether s is a repository name in the distribution spec's
// grammar, [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*
// (its length is the caller's to bound). Like ValidTag it takes request bytes and stored
// strings alike: the proxy checks what clients ask, the cache what a snapshot holds.
func ValidRepository[T ~string | ~[]byte](s T) bool {
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '/' {
			if !validComponent(s[start:i]) {
				return false // an empty one included: a leading, trailing or doubled slash
			}
			start = i + 1
		}
	}
	return true
}

func validComponent[T ~string | ~[]byte](c T) bool {
	if len(c) == 0 || !alnum(c[0]) || !alnum(c[len(c)-1]) {
		return false
	}
	for i := 1; i < len(c); i++ {
		b := c[i]
		if alnum(b) {
			continue
		}
		switch b {
		case '.':
			if !alnum(c[i-1]) || !alnum(c[i+1]) {
				return false
			}
		case '_':
			// "_" or "__", between alphanumerics.
			if c[i-1] == '_' {
				if i < 2 || !alnum(c[i-2]) || !alnum(c[i+1]) {
					return false
				}
			} else if !alnum(c[i-1]) || (c[i+1] != '_' && !alnum(c[i+1])) {
				return false
			}
		case '-':
			// Runs of dashes are fine; the run must sit between alphanumerics, which the
			// first/last checks and the other separators' checks ensure.
			if c[i-1] != '-' && !alnum(c[i-1]) {
				return false
			}
		default:
			return false
		}
	}
	return true
}

func alnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }
