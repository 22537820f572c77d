package logging

import (
	"flag"
	"fmt"
	"strconv"

	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

// Klog is flanneld's klog flags, which overlayd accepts with their meaning:
// -v is the verbosity (client-go logs at klog verbosities, overlayd's debug
// lines are verbosity 1), -vmodule and -log_backtrace_at go to klog, which
// client-go logs through.
type Klog struct {
	Verbosity   int
	VModule     string
	BacktraceAt string
	// SetsLevel: -v was given and --log-level was not, so the verbosity
	// is the log level.
	SetsLevel bool
}

// level is the zap level of a verbosity: klog's V(n) lines are logged by
// zapr at level -n, overlayd's debug lines at -1.
func (k Klog) level() zapcore.Level {
	if k.Verbosity == 0 {
		return zapcore.InfoLevel
	}
	return zapcore.Level(-min(k.Verbosity, 127))
}

// apply sets klog's own flags; their errors name the flag.
func (k Klog) apply() error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for _, f := range []struct{ name, value string }{
		{"v", strconv.Itoa(k.Verbosity)},
		{"vmodule", k.VModule},
		{"log_backtrace_at", k.BacktraceAt},
	} {
		if f.value == "" {
			continue
		}
		if err := fs.Set(f.name, f.value); err != nil {
			return fmt.Errorf("-%s %q: %v", f.name, f.value, err)
		}
	}
	return nil
}
