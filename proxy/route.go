package proxy

import (
	"bytes"
	"net/netip"
	"net/url"
	"sync"
	"unsafe"

	"github.com/opencontainers/go-digest"

	"regcache/upstream"
)

// Kind is the endpoint a request is for: one of the /v2/ endpoints a Route names, or one
// the handler answers outside /v2/. It is the route label of the request metrics.
type Kind uint8

// The endpoints regcache answers.
const (
	KindOther Kind = iota // an unknown path, or a /v2/ path that did not parse
	KindBase
	KindManifest
	KindTags
	KindBlob
	KindAPI
	KindToken
	KindHealth
	KindMetrics
	KindStatus // the status page, / and /status
	numKinds
)

// kindNames are the Kinds as the metrics' route label names them.
var kindNames = [numKinds]string{"other", "base", "manifest", "tags", "blob", "api", "token", "health", "metrics", "status"}

// Route is a request parsed once into what the layers below need.
type Route struct {
	Kind     Kind
	Upstream *Upstream
	// Repo is the repository name upstream knows (library/ added for Docker Hub).
	Repo string
	// Ref is the tag or digest of a manifest, or the digest of a blob.
	Ref string
	// Repo and Ref alias the request's own buffers (or scratch, for library/ names) and
	// are valid only while the handler runs; the cache copies what it keeps.
	scratch *routeScratch
	// rawRepo is the name as the client wrote it (before library/), for checkNames.
	rawRepo []byte
}

// routeScratch holds a rewritten repository name ("library/" + name) without allocating.
type routeScratch struct{ b []byte }

var scratchPool = sync.Pool{New: func() any { return &routeScratch{b: make([]byte, 0, 128)} }}

// release returns the route's scratch buffer; Repo is invalid afterwards.
func (r *Route) release() {
	if r.scratch != nil {
		scratchPool.Put(r.scratch)
		r.scratch = nil
	}
}

// b2s views b as a string without copying; b must not change while the string is used.
func b2s(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// maxNameLength is the distribution spec's bound on a repository name (with its host).
const maxNameLength = 255

// parseRoute reads a /v2/ path (as sent, not decoded) and its ns= query into a Route. It
// checks the structure and the upstream; the names are checked by checkNames, which a
// cache hit can skip (nothing invalid is ever stored, so an invalid name cannot hit).
func (p *Proxy) parseRoute(rawPath []byte, ns []byte) (Route, *apiError) {
	path, aerr := decodePath(rawPath)
	if aerr != nil {
		return Route{}, aerr
	}
	rest := bytes.TrimPrefix(path, []byte("/v2"))
	if len(rest) == 0 || (len(rest) == 1 && rest[0] == '/') {
		return Route{Kind: KindBase}, nil
	}
	rest = rest[1:]
	var r Route
	var name, ref []byte
	if i := bytes.LastIndex(rest, []byte("/manifests/")); i > 0 {
		r.Kind, name, ref = KindManifest, rest[:i], rest[i+len("/manifests/"):]
	} else if i := bytes.LastIndex(rest, []byte("/blobs/")); i > 0 {
		r.Kind, name, ref = KindBlob, rest[:i], rest[i+len("/blobs/"):]
	} else if bytes.HasSuffix(rest, []byte("/tags/list")) && len(rest) > len("/tags/list") {
		r.Kind, name = KindTags, rest[:len(rest)-len("/tags/list")]
	} else {
		return Route{}, errEndpointUnknown.with("unknown endpoint: regcache answers /v2/<name>/manifests/<reference>, /v2/<name>/tags/list and /v2/<name>/blobs/<digest>")
	}
	up, repo, aerr := p.pickUpstream(name, ns)
	if aerr != nil {
		return Route{}, aerr
	}
	r.Upstream = up
	r.rawRepo = repo
	if up.DockerHub && bytes.IndexByte(repo, '/') < 0 {
		r.scratch = scratchPool.Get().(*routeScratch)
		r.scratch.b = append(append(r.scratch.b[:0], "library/"...), repo...)
		r.Repo = b2s(r.scratch.b)
	} else {
		r.Repo = b2s(repo)
	}
	r.Ref = b2s(ref)
	return r, nil
}

// checkNames validates the repository and reference against the distribution grammar:
// the gate before anything can be asked upstream.
func checkNames(r *Route) *apiError {
	repo, ref := r.rawRepo, s2b(r.Ref)
	if len(repo) > maxNameLength {
		return errNameInvalid.with("repository name longer than 255 characters")
	}
	if !upstream.ValidRepository(repo) {
		return errNameInvalid.with("invalid repository name " + quote(repo))
	}
	switch r.Kind {
	case KindManifest:
		if bytes.IndexByte(ref, ':') >= 0 {
			if _, err := digest.Parse(r.Ref); err != nil {
				return errDigestInvalid.with("invalid digest " + quote(ref))
			}
		} else if !upstream.ValidTag(ref) {
			return errTagInvalid.with("invalid tag " + quote(ref))
		}
	case KindBlob:
		if _, err := digest.Parse(r.Ref); err != nil {
			return errDigestInvalid.with("invalid digest " + quote(ref))
		}
	}
	return nil
}

// pickUpstream applies the /v2/ routing forms: ns= (containerd), then a first segment naming a
// registry or alias (path-prefix mirrors), then default_upstream. A first segment that
// looks like a host but is not configured is refused: regcache is no open proxy.
// unknownRegistry is the answer for a host-like name that names no upstream.
func unknownRegistry(name []byte) *apiError {
	if !validHost(name) {
		return errNameInvalid.with("invalid registry or repository name " + quote(name))
	}
	return errNameUnknown.with("registry " + quote(name) + " is not configured in regcache")
}

func (p *Proxy) pickUpstream(name, ns []byte) (*Upstream, []byte, *apiError) {
	if len(ns) > 0 {
		up := p.lookup(ns)
		if up == nil {
			return nil, nil, errNameUnknown.with("registry " + quote(ns) + " is not configured in regcache")
		}
		return up, name, nil
	}
	first, rest, hasRest := bytes.Cut(name, []byte("/"))
	if looksLikeHost(first) {
		up := p.lookup(first)
		if up == nil {
			return nil, nil, unknownRegistry(first)
		}
		if !hasRest {
			return nil, nil, errNameInvalid.with("no repository after registry " + quote(first))
		}
		return up, rest, nil
	}
	if hasRest {
		if up := p.lookup(first); up != nil {
			return up, rest, nil
		}
	}
	return p.def, name, nil
}

// looksLikeHost follows Docker's reference grammar: a first component with a dot or a
// colon, or "localhost", is a registry host.
func looksLikeHost(s []byte) bool {
	return bytes.IndexByte(s, '.') >= 0 || bytes.IndexByte(s, ':') >= 0 || string(s) == "localhost"
}

// validHost checks the reference grammar's domain: labels of letters, digits and inner
// dashes joined by dots, or a bracketed IPv6 address, then an optional :port. It tells a
// malformed name ("..", "a..b") from a well-formed registry that is not configured.
func validHost(s []byte) bool {
	if i := bytes.LastIndexByte(s, ':'); i >= 0 && i > bytes.LastIndexByte(s, ']') {
		port := s[i+1:]
		if len(port) == 0 || len(port) > 5 || bytes.ContainsFunc(port, func(r rune) bool { return r < '0' || r > '9' }) {
			return false
		}
		s = s[:i]
	}
	if len(s) > 2 && s[0] == '[' && s[len(s)-1] == ']' {
		ip, err := netip.ParseAddr(string(s[1 : len(s)-1]))
		return err == nil && ip.Is6() && ip.Zone() == "" // the grammar has no zones ("%eth0")
	}
	if len(s) == 0 {
		return false
	}
	for _, label := range bytes.Split(s, []byte(".")) {
		if len(label) == 0 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, b := range label {
			if !(alnum(b) || b >= 'A' && b <= 'Z' || b == '-') {
				return false
			}
		}
	}
	return true
}

// decodePath refuses encoded slashes and dots (they would let a client smuggle path
// structure past the router) and decodes any other escapes.
func decodePath(raw []byte) ([]byte, *apiError) {
	if bytes.IndexByte(raw, '%') < 0 {
		return raw, nil
	}
	lower := bytes.ToLower(raw)
	if bytes.Contains(lower, []byte("%2f")) || bytes.Contains(lower, []byte("%2e")) || bytes.Contains(lower, []byte("%5c")) {
		return nil, errNameInvalid.with("encoded '/', '.' or '\\' in the path is not allowed")
	}
	s, err := url.PathUnescape(string(raw))
	if err != nil {
		return nil, errNameInvalid.with("malformed escape in the path")
	}
	return []byte(s), nil
}

func alnum(b byte) bool { return b >= 'a' && b <= 'z' || b >= '0' && b <= '9' }

// quote shows untrusted input in a message, bounded and escaped.
func quote(b []byte) string {
	if len(b) > 100 {
		b = append(b[:100:100], "..."...)
	}
	return `"` + string(bytes.ToValidUTF8(b, []byte("?"))) + `"`
}
