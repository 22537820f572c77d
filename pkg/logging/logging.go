// Package logging builds overlayd's zap logger and routes klog, which
// client-go logs through, into it so all output shares one format.
package logging

import (
	"fmt"
	"slices"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

// Formats and Levels are the accepted --log-format and --log-level values.
var (
	Formats = []string{"console", "json"}
	Levels  = []string{"debug", "info", "warn", "error"}
)

// New returns a logger writing to stderr in format ("console" or "json") at
// level (or at kl's verbosity, when that sets the level), and makes klog
// write through it with kl's settings.
func New(level, format string, kl Klog) (*zap.Logger, error) {
	lvl, err := Check(level, format)
	if err != nil {
		return nil, err
	}
	if kl.SetsLevel {
		lvl = kl.level()
	}
	if err := kl.apply(); err != nil {
		return nil, err
	}
	var cfg zap.Config
	switch format {
	case "json":
		cfg = zap.NewProductionConfig()
	case "console":
		cfg = zap.NewDevelopmentConfig()
		cfg.Development = false
		cfg.DisableStacktrace = true
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil // a network daemon's rare errors must never be sampled away
	cfg.EncoderConfig.TimeKey = "ts"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	log, err := cfg.Build()
	if err != nil {
		return nil, err
	}
	RouteKlog(log)
	return log, nil
}

// Check validates a --log-level and --log-format pair.
func Check(level, format string) (zapcore.Level, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil || !slices.Contains(Levels, level) {
		return lvl, fmt.Errorf("--log-level %q: want one of %v", level, Levels)
	}
	if !slices.Contains(Formats, format) {
		return lvl, fmt.Errorf("--log-format %q: want one of %v", format, Formats)
	}
	return lvl, nil
}

// RouteKlog sends klog output (client-go's) to log under the name "client-go".
func RouteKlog(log *zap.Logger) {
	klog.SetLogger(zapr.NewLogger(log.Named("client-go")))
}
