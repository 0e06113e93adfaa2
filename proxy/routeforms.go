package proxy

import (
	"bytes"
	"net/url"
)

// The request path as clients write it, mapped onto the /v2/ form the router reads. Two
// client forms are not /v2/...:
//
//   - /<upstream>/v2/<repository>/... (and /<upstream>/v2/): Renovate, given the registry URL
//     http://regcache:5000/hub, pings /hub/v2/ and asks manifests at /hub/v2/<repository>/...
//     (it keeps the path of an http:// registry URL in front of /v2/), while it lists tags at
//     /v2/hub/<repository>/tags/list. Both must name the same upstream the same way, so this
//     form is rewritten to /v2/<upstream>/<repository>/... and routed as that path is.
//   - //v2/...: What's Up Docker with a registry URL that ends in a slash.

var strV2 = []byte("v2")

// v2Path returns the path to route (/v2 or /v2/...; anything else is not the registry API)
// and the path a tags Link is written in, the client's own form. A rewritten path lives in
// s, which the caller gives back to scratchPool once the request is answered. aerr is for
// /<host>/v2/ naming a registry that is not configured: there is no /v2/ path to route.
func (p *Proxy) v2Path(path []byte) (v2, link []byte, s *routeScratch, aerr *apiError) {
	if bytes.HasPrefix(path, strV2Slash) || len(path) < 4 || path[0] != '/' {
		return path, path, nil, nil // the /v2/ form, and every fixed endpoint, as sent
	}
	if path[1] == '/' {
		// Only a leading "//" before v2 collapses: "//v2" is "/v2", "//v2/x" is "/v2/x".
		if rest := path[2:]; bytes.HasPrefix(rest, strV2) && (len(rest) == 2 || rest[2] == '/') {
			return path[1:], path[1:], nil, nil
		}
		return path, path, nil, nil
	}
	seg, after, _ := bytes.Cut(path[1:], []byte("/"))
	if !bytes.HasPrefix(after, strV2) || (len(after) > 2 && after[2] != '/') {
		return path, path, nil, nil
	}
	after = after[2:] // "", "/" or "/<repository>/..."
	// The name as the /v2/<upstream>/ form reads it, decoded; the rewritten path keeps it
	// as sent, since the router decodes that path once.
	name := seg
	if bytes.IndexByte(seg, '%') >= 0 {
		d, err := url.PathUnescape(string(seg))
		if err != nil {
			return path, path, nil, nil // not a name: an unknown endpoint
		}
		name = []byte(d)
	}
	configured := p.lookup(name) != nil
	if !configured && !looksLikeHost(name) {
		return path, path, nil, nil // not an upstream: an unknown endpoint, as before
	}
	if len(after) <= 1 {
		if !configured {
			return nil, path, nil, unknownRegistry(name)
		}
		return path[len(seg)+1:], path, nil, nil // the base endpoint: "/v2" or "/v2/"
	}
	s = scratchPool.Get().(*routeScratch)
	s.b = append(append(append(s.b[:0], strV2Slash...), seg...), after...)
	return s.b, path, s, nil
}
