// Command overlayd is the node agent: it takes this node's pod subnet lease
// from the Kubernetes API and programs the kernel so that pods on different
// nodes reach each other. This file only wires the parts together.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/overlayd/overlayd/backend"
	_ "github.com/overlayd/overlayd/backend/hostgw"
	_ "github.com/overlayd/overlayd/backend/udp"
	_ "github.com/overlayd/overlayd/backend/vxlan"
	"github.com/overlayd/overlayd/backend/wireguard"
	"github.com/overlayd/overlayd/pkg/health"
	"github.com/overlayd/overlayd/pkg/ip"
	"github.com/overlayd/overlayd/pkg/kernel"
	"github.com/overlayd/overlayd/pkg/logging"
	"github.com/overlayd/overlayd/pkg/metrics"
	"github.com/overlayd/overlayd/pkg/rules"
	"github.com/overlayd/overlayd/pkg/version"
	"github.com/overlayd/overlayd/reconcile"
	"github.com/overlayd/overlayd/subnet/kube"
)

func main() {
	opts, err := parseOptions(os.Args[1:], defaultGetenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlayd: %v\n", err)
		os.Exit(2)
	}
	if opts.version {
		fmt.Println(version.Version)
		return
	}
	reconcile.TuneGC()
	log, err := logging.New(opts.logLevel, opts.logFormat, opts.klog)
	if err != nil {
		fmt.Fprintf(os.Stderr, "overlayd: %v\n", err)
		os.Exit(2)
	}
	if opts.uninstall {
		if err := uninstall(opts, log); err != nil {
			log.Error("uninstalling overlayd's datapath failed", zap.Error(err))
			log.Sync()
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, opts, log); err != nil {
		log.Error("overlayd failed", zap.Error(err))
		log.Sync()
		os.Exit(1)
	}
}

func run(ctx context.Context, o *options, log *zap.Logger) error {
	log.Info("starting overlayd", zap.String("version", version.Version))
	if o.wireguardKeyFile != "" {
		wireguard.SetKeyFile(o.wireguardKeyFile)
	}
	// Userspace datapaths resume first: they forward nothing until opened.
	datapaths, err := backend.OpenDatapaths(backend.DatapathEnv{StateDir: filepath.Dir(o.subnetFile), Log: log.Named("datapath")})
	if err != nil {
		return err
	}
	defer datapaths.Close()

	data, err := os.ReadFile(o.netConfigPath)
	if err != nil {
		return fmt.Errorf("reading --net-config-path: %w", err)
	}
	netConf, be, err := backend.Load(data)
	if err != nil {
		return fmt.Errorf("%s: %w", o.netConfigPath, err)
	}

	underlayOpts := o.selectOptions(netConf.EnableIPv4, netConf.EnableIPv6)
	underlay, err := ip.SelectExternal(underlayOpts, ip.NetlinkHost{})
	if err != nil {
		return fmt.Errorf("choosing the external interface: %w", err)
	}
	log.Info("using external interface", zap.String("iface", underlay.Iface.Name),
		zap.Stringer("addr", underlay.Addr), zap.Stringer("publicIP", underlay.PublicIP))

	restCfg, err := kube.NewClientConfig(o.kubeconfigFile, o.kubeAPIURL)
	if err != nil {
		return err
	}
	client, err := kube.NewClient(restCfg)
	if err != nil {
		return fmt.Errorf("building Kubernetes client: %w", err)
	}
	nodeName, err := kube.NodeName(ctx, client, os.Getenv)
	if err != nil {
		return err
	}
	events := kube.NewEvents(ctx, client, nodeName)
	leases, err := kube.New(kube.Config{
		Client:                    client,
		NodeName:                  nodeName,
		Net:                       netConf,
		AnnotationPrefix:          o.kubeAnnotationPrefix,
		LeaseNamespace:            o.leaseNamespace,
		SetNodeNetworkUnavailable: o.setNodeNetUnavail,
		RenewMargin:               o.leaseRenewMargin,
		Events:                    events,
		Log:                       log.Named("leases"),
	})
	if err != nil {
		return err
	}

	reconciler, err := kernel.NewReconciler(log.Named("kernel"))
	if err != nil {
		return err
	}
	defer reconciler.Close()
	trafficRules := rules.NewModes(log.Named("rules"))

	status := health.NewStatus(3*o.resyncPeriod+30*time.Second, health.Lease, health.Datapath, health.Rules)
	if o.healthzPort != 0 {
		addr := net.JoinHostPort(o.healthzIP, strconv.Itoa(o.healthzPort))
		h := health.Handler(status, metrics.Registry)
		if o.profiling {
			h = health.Profiling(h)
		}
		if err := health.Serve(ctx, addr, h, log); err != nil {
			return err
		}
		log.Info("serving /healthz, /readyz and /metrics", zap.String("addr", addr), zap.Bool("profiling", o.profiling))
	}
	if o.metricsAddr != "" {
		if err := health.Serve(ctx, o.metricsAddr, health.MetricsHandler(metrics.Registry), log); err != nil {
			return err
		}
		log.Info("serving /metrics", zap.String("addr", o.metricsAddr))
	}

	loop := reconcile.New(reconcile.Config{
		NodeName:          nodeName,
		Net:               netConf,
		Backend:           be,
		Leases:            leases,
		Underlay:          underlay,
		UnderlayOptions:   underlayOpts,
		Host:              ip.NetlinkHost{},
		Kernel:            reconciler,
		Datapaths:         datapaths,
		Rules:             trafficRules,
		NetConfigPath:     o.netConfigPath,
		NetConfig:         data,
		SubnetFile:        o.subnetFile,
		IPMasq:            o.ipMasq,
		ForwardRules:      o.iptablesForwardRules,
		MasqNoRandomFully: o.masqRandomFullyOff,
		BlackholeRoute:    o.blackholeRoute,
		IngressFilter:     o.ingressFilter,
		ResyncPeriod:      o.resyncPeriod,
		RulesResync:       time.Duration(o.iptablesResync) * time.Second,
		Status:            status,
		Events:            events,
		Log:               log.Named("loop"),
	})
	return loop.Run(ctx)
}

// uninstall wires what --uninstall removes with.
func uninstall(o *options, log *zap.Logger) error {
	datapaths, err := backend.OpenDatapaths(backend.DatapathEnv{StateDir: filepath.Dir(o.subnetFile), Log: log.Named("datapath")})
	if err != nil {
		return err
	}
	defer datapaths.Close()
	reconciler, err := kernel.NewReconciler(log.Named("kernel"))
	if err != nil {
		return err
	}
	defer reconciler.Close()
	return reconcile.Uninstall(reconciler, rules.NewModes(log.Named("rules")), datapaths, log)
}
