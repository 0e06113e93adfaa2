package proxy

import (
	"bytes"

	"regcache/upstream"
)

// accepts reports whether any of the client's Accept headers (Docker sends several) admits
// mediaType. No Accept at all, or a wildcard, admits everything.
func accepts(headers [][]byte, mediaType string) bool {
	if len(headers) == 0 {
		return true
	}
	for _, h := range headers {
		for len(h) > 0 {
			var item []byte
			if i := bytes.IndexByte(h, ','); i >= 0 {
				item, h = h[:i], h[i+1:]
			} else {
				item, h = h, nil
			}
			if i := bytes.IndexByte(item, ';'); i >= 0 {
				item = item[:i]
			}
			item = bytes.TrimSpace(item)
			if string(item) == mediaType || string(item) == "*/*" || string(item) == "application/*" {
				return true
			}
		}
	}
	return false
}

// notAcceptedMessage says what a registry says when it cannot serve what the client accepts.
func notAcceptedMessage(mediaType string) string {
	switch mediaType {
	case upstream.MediaTypeOCIManifest:
		return "OCI manifest found, but accept header does not support OCI manifests"
	case upstream.MediaTypeOCIIndex:
		return "OCI index found, but accept header does not support OCI indexes"
	case upstream.MediaTypeDockerList:
		return "manifest list found, but accept header does not support manifest lists"
	case upstream.MediaTypeDockerManifest:
		return "schema 2 manifest found, but accept header does not support schema 2 manifests"
	}
	return mediaType + " found, but accept header does not support it"
}
