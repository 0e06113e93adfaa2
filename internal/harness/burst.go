package harness

// Bursts: many clients at once, released together, the load that coalescing and the fleet
// lock exist for.

import (
	"io"
	"net/http"
	"sync"
)

// Result is one client's answer in a burst, or the error that stood for it.
type Result struct {
	Response
	Err error
}

// Burst sends n requests at once, one goroutine each, released together: client i sends
// method path(i) to ins[i%len(ins)] (with its Client), with header pairs added. It
// returns every client's result, in client order, and never fails the test itself.
func Burst(ins []*Instance, n int, method string, path func(i int) string, header ...string) []Result {
	out := make([]Result, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range out {
		in := ins[i%len(ins)]
		req, err := http.NewRequest(method, in.URL+path(i), nil)
		if err != nil {
			out[i].Err = err
			continue
		}
		for j := 0; j+1 < len(header); j += 2 {
			req.Header.Add(header[j], header[j+1])
		}
		wg.Go(func() {
			<-gate
			resp, err := in.Client.Do(req)
			if err != nil {
				out[i].Err = err
				return
			}
			defer resp.Body.Close()
			out[i].Status, out[i].Header = resp.StatusCode, resp.Header
			out[i].Body, out[i].Err = io.ReadAll(resp.Body)
		})
	}
	close(gate)
	wg.Wait()
	return out
}
