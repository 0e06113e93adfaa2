package registrytest

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
)

// isBlobGet reports a blob GET, the request the blob faults below answer.
func isBlobGet(r *http.Request) bool {
	return r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/")
}

// PartialBlob answers every blob GET with 206 Partial Content and body, as the first
// len(body) bytes of a blob twice as long, whether or not a Range was asked: a hostile or
// broken CDN handing back a part, or other bytes, as if it were the blob.
func PartialBlob(body []byte) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !isBlobGet(r) {
			return false
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Range", fmt.Sprintf("bytes 0-%d/%d", len(body)-1, 2*len(body)))
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.WriteHeader(http.StatusPartialContent)
		_, _ = w.Write(body)
		return true
	}
}

// BlobBody answers every blob GET with 200 and body, whatever blob or Range was asked: a
// lying upstream. With chunked the length is not announced (the body goes out in chunks),
// so only the bytes themselves can show the lie.
func BlobBody(body []byte, chunked bool) Fault {
	return func(w http.ResponseWriter, r *http.Request) bool {
		if !isBlobGet(r) {
			return false
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if !chunked {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		w.WriteHeader(http.StatusOK)
		if chunked {
			w.(http.Flusher).Flush() // headers out without a length: the body is chunked
		}
		_, _ = w.Write(body)
		return true
	}
}

// IgnoreRange forwards blob GETs to the registry without their Range header, so they are
// answered 200 with the whole blob, as servers that do not do ranges answer (RFC 9110
// allows it).
func (r *Registry) IgnoreRange() Fault {
	return func(w http.ResponseWriter, req *http.Request) bool {
		if !isBlobGet(req) || req.Header.Get("Range") == "" || !r.authorized(req) {
			return false
		}
		req.Header.Del("Range")
		r.inner.ServeHTTP(w, req)
		return true
	}
}
