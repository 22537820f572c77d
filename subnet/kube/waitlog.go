package kube

import (
	"time"

	"go.uber.org/zap"
)

// waitLogger logs what a wait is for, once per distinct reason and again
// every minute while it lasts, so a stuck agent says why.
type waitLogger struct {
	log      *zap.Logger
	last     string
	loggedAt time.Time
	since    time.Time
}

func (w *waitLogger) say(msg string, fields ...zap.Field) {
	now := time.Now()
	if msg == w.last && now.Sub(w.loggedAt) < time.Minute {
		return
	}
	if msg != w.last {
		w.since = now
	}
	w.last, w.loggedAt = msg, now
	w.log.Info(msg, append(fields, zap.Duration("waited", now.Sub(w.since).Round(time.Second)))...)
}
