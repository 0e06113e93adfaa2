package harness

// Asking a test registry directly, past regcache: the reference answer regcache must
// reproduce, or the truth a fault distorts.

import (
	"encoding/json"
	"io"
	"net/http"
	"time"

	"regcache/upstream/registrytest"
)

// direct is the client for registries: no proxy from the environment, no connections
// kept (registries come and go with their tests).
var direct = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}

// AskRegistry sends method uri (a path and query) to reg itself with a pull token from
// reg's token endpoint, asked with reg's credentials (a NoAuth registry ignores the token, a
// Bearer one the credentials), and header pairs added to both requests (a header a fault
// lets pass must reach the token endpoint too). It reads the whole answer. It never fails
// the test, so that fault handlers may call it.
func AskRegistry(reg *registrytest.Registry, method, uri string, header ...string) (Response, error) {
	treq, err := http.NewRequest(http.MethodGet, reg.URL+"/token", nil)
	if err != nil {
		return Response{}, err
	}
	treq.SetBasicAuth(reg.Username, reg.Password)
	req, err := http.NewRequest(method, reg.URL+uri, nil)
	if err != nil {
		return Response{}, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		treq.Header.Add(header[i], header[i+1])
		req.Header.Add(header[i], header[i+1])
	}
	tresp, err := direct.Do(treq)
	if err != nil {
		return Response{}, err
	}
	var tok struct{ Token string }
	_ = json.NewDecoder(tresp.Body).Decode(&tok)
	tresp.Body.Close()
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err := direct.Do(req)
	if err != nil {
		return Response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return Response{Status: resp.StatusCode, Header: resp.Header, Body: body}, err
}
