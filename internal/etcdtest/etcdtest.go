// Package etcdtest runs an embedded etcd server for tests.
package etcdtest

import (
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// startTimeout bounds how long Start waits for the server to become ready.
const startTimeout = 30 * time.Second

// Start starts a single-member etcd server with its data in tb.TempDir(),
// listening only on 127.0.0.1 on ports the kernel chooses, and returns a client
// connected to it. The server logs only errors, to stderr, and nothing while
// it shuts down (it reports its closed listeners as errors). tb.Cleanup closes
// the client and then the server.
func Start(tb testing.TB) *clientv3.Client {
	tb.Helper()
	c, _ := start(tb, false)
	return c
}

// StartDurable is [Start] with etcd's fsync on every commit, as a production
// server runs: for benchmarks that measure persisted writes.
func StartDurable(tb testing.TB) *clientv3.Client {
	tb.Helper()
	c, _ := start(tb, true)
	return c
}

// StartStoppable is [Start], and also returns a function that stops the
// server while the test goes on, as a crash would: the member stops at once
// (it commits, renews and answers nothing more), then its listeners close.
// Clients see their requests fail or time out. Calling stop again, and the
// cleanup after it, do nothing more.
func StartStoppable(tb testing.TB) (client *clientv3.Client, stop func()) {
	tb.Helper()
	return start(tb, false)
}

func start(tb testing.TB, fsync bool) (*clientv3.Client, func()) {
	tb.Helper()

	// Port 0 lets the kernel choose free ports without a race between picking
	// a port and binding it. A single member never dials its own peer URL, so
	// an advertised peer port of 0 is harmless.
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg := embed.NewConfig()
	cfg.Name = "etcdtest"
	cfg.Dir = tb.TempDir()
	var closing atomic.Bool
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.Lock(os.Stderr),
		zap.LevelEnablerFunc(func(l zapcore.Level) bool {
			return l >= zapcore.ErrorLevel && !closing.Load()
		}),
	)))
	cfg.ListenClientUrls = []url.URL{loopback}
	cfg.AdvertiseClientUrls = []url.URL{loopback}
	cfg.ListenPeerUrls = []url.URL{loopback}
	cfg.AdvertisePeerUrls = []url.URL{loopback}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// The data is thrown away after the test.
	cfg.UnsafeNoFsync = !fsync
	// A lone member elects itself after an election timeout: keep it short.
	cfg.TickMs = 10
	cfg.ElectionMs = 100

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	var stopOnce sync.Once
	stop := func() {
		stopOnce.Do(func() {
			closing.Store(true)
			e.Server.HardStop()
			e.Close()
		})
	}
	tb.Cleanup(func() {
		stopOnce.Do(func() {
			closing.Store(true)
			e.Close()
		})
	})

	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		tb.Fatalf("start etcd: %v", err)
	case <-time.After(startTimeout):
		e.Server.Stop()
		tb.Fatalf("start etcd: not ready after %v", startTimeout)
	}

	endpoints := make([]string, 0, len(e.Clients))
	for _, l := range e.Clients {
		endpoints = append(endpoints, "http://"+l.Addr().String())
	}
	// Registered after e.Close, so it runs before it.
	return Connect(tb, endpoints...), stop
}

// Connect returns a new client for endpoints, for example those of a client
// returned by [Start] (see [clientv3.Client.Endpoints]). tb.Cleanup closes it.
func Connect(tb testing.TB, endpoints ...string) *clientv3.Client {
	tb.Helper()
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: startTimeout,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		tb.Fatalf("connect to etcd: %v", err)
	}
	tb.Cleanup(func() {
		if err := c.Close(); err != nil {
			tb.Errorf("close etcd client: %v", err)
		}
	})
	return c
}
