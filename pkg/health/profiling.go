package health

import (
	"net/http"
	"net/http/pprof"
)

// Profiling serves Go's runtime profiles (net/http/pprof) under
// /debug/pprof/ beside h: the heap and CPU of a running agent, for scale
// work and bug reports. It is off unless asked for (--profiling): a CPU
// profile costs what it measures, and profiles show the program's insides.
func Profiling(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", h)
	return mux
}
