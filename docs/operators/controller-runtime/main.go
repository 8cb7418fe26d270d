// The MySQLCluster operator of examples/mysql-operator, written with controller-runtime.
//
// The same resource, children and status: a root Secret <name>-root (generated once), a
// headless Service <name>, pods <name>-<i> made one at a time once those before are Ready (a
// StatefulSet's OrderedReady), each with its PVC data-<name>-<i>; scale-down from the highest
// ordinal, outdated pods replaced from the highest down; status with the conditions Ready and
// Progressing. A finalizer deletes the Secret before the cluster goes.
//
// The kubebuilder markers below are what controller-gen reads: `controller-gen crd
// object paths=./...` writes the CRD and would write the DeepCopy methods that are written
// out by hand at the end of this file.
//
// +groupName=database.example.com
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crscheme "sigs.k8s.io/controller-runtime/pkg/scheme"
)

const (
	finalizer = "database.example.com/cleanup"
	specHash  = "database.example.com/spec-hash"
)

// --- the resource --------------------------------------------------------------------------

type Resources struct {
	// +kubebuilder:validation:Pattern=`^[0-9]+(\.[0-9]+)?m?$`
	// +kubebuilder:default="500m"
	CPU string `json:"cpu,omitempty"`
	// +kubebuilder:validation:Pattern=`^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`
	// +kubebuilder:default="1Gi"
	Memory string `json:"memory,omitempty"`
}

type MySQLClusterSpec struct {
	// mysql image tag
	// +kubebuilder:validation:Pattern=`^[0-9]+\.[0-9]+(\.[0-9]+)?$`
	// +kubebuilder:default="8.0"
	Version string `json:"version,omitempty"`
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=1
	Replicas int32 `json:"replicas"`
	// e.g. 10Gi
	// +kubebuilder:validation:Pattern=`^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$`
	StorageSize string `json:"storageSize"`
	// +kubebuilder:default={}
	Resources Resources `json:"resources,omitempty"`
}

type MySQLClusterStatus struct {
	Replicas      int32  `json:"replicas"`
	ReadyReplicas int32  `json:"readyReplicas"`
	Selector      string `json:"selector,omitempty"`
	// +kubebuilder:validation:Enum=Pending;Scaling;Ready
	Phase              string             `json:"phase,omitempty"`
	LastUpdate         *metav1.Time       `json:"lastUpdate,omitempty"`
	ObservedGeneration int64              `json:"observedGeneration,omitempty"`
	Conditions         []metav1.Condition `json:"conditions,omitempty"`
}

// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:subresource:scale:specpath=.spec.replicas,statuspath=.status.replicas,selectorpath=.status.selector
// +kubebuilder:resource:shortName=mysql
// +kubebuilder:printcolumn:name=Replicas,type=integer,JSONPath=.spec.replicas
// +kubebuilder:printcolumn:name=Ready,type=integer,JSONPath=.status.readyReplicas
// +kubebuilder:printcolumn:name=Phase,type=string,JSONPath=.status.phase
// +kubebuilder:printcolumn:name=Age,type=date,JSONPath=.metadata.creationTimestamp
type MySQLCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              MySQLClusterSpec   `json:"spec,omitempty"`
	Status            MySQLClusterStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true
type MySQLClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []MySQLCluster `json:"items"`
}

var (
	groupVersion  = schema.GroupVersion{Group: "database.example.com", Version: "v1"}
	schemeBuilder = &crscheme.Builder{GroupVersion: groupVersion}
)

// --- bodies ----------------------------------------------------------------------------------

func labels(c *MySQLCluster) map[string]string {
	return map[string]string{"app.kubernetes.io/name": "mysql", "app.kubernetes.io/instance": c.Name}
}

// stamp puts a hash of obj's spec in an annotation: a pod whose hash differs is outdated.
func stamp(obj metav1.Object, spec any) string {
	body, _ := json.Marshal(spec)
	sum := sha256.Sum256(body)
	hash := fmt.Sprintf("%x", sum[:8])
	obj.SetAnnotations(map[string]string{specHash: hash})
	return hash
}

func podFor(c *MySQLCluster, ordinal int32) *corev1.Pod {
	name := fmt.Sprintf("%s-%d", c.Name, ordinal)
	limits := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(c.Spec.Resources.CPU),
		corev1.ResourceMemory: resource.MustParse(c.Spec.Resources.Memory),
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.Namespace, Labels: labels(c)},
		Spec: corev1.PodSpec{
			Hostname:  name,
			Subdomain: c.Name,
			Containers: []corev1.Container{{
				Name:  "mysql",
				Image: "mysql:" + c.Spec.Version,
				Env: []corev1.EnvVar{{Name: "MYSQL_ROOT_PASSWORD", ValueFrom: &corev1.EnvVarSource{
					SecretKeyRef: &corev1.SecretKeySelector{
						LocalObjectReference: corev1.LocalObjectReference{Name: c.Name + "-root"},
						Key:                  "password",
					}}}},
				Ports:     []corev1.ContainerPort{{Name: "mysql", ContainerPort: 3306}},
				Resources: corev1.ResourceRequirements{Requests: limits, Limits: limits},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{
						Command: []string{"mysqladmin", "ping", "-h", "127.0.0.1"}}},
					InitialDelaySeconds: 5,
					PeriodSeconds:       5,
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/var/lib/mysql"}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{
					ClaimName: fmt.Sprintf("data-%s-%d", c.Name, ordinal)}}}},
		},
	}
	stamp(pod, pod.Spec)
	return pod
}

func ready(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func failed(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded
}

func outdated(c *MySQLCluster, ordinal int32, p *corev1.Pod) bool {
	return p.Annotations[specHash] != podFor(c, ordinal).Annotations[specHash]
}

// --- the reconciler --------------------------------------------------------------------------

type Reconciler struct {
	client.Client
	Scheme   *runtime.Scheme
	Recorder record.EventRecorder
}

// +kubebuilder:rbac:groups=database.example.com,resources=mysqlclusters,verbs=get;list;watch;update;patch
// +kubebuilder:rbac:groups=database.example.com,resources=mysqlclusters/status;mysqlclusters/finalizers,verbs=get;update;patch
// +kubebuilder:rbac:groups="",resources=pods;services;persistentvolumeclaims,verbs=get;list;watch;create;update;patch;delete
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;create;delete
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var c MySQLCluster
	if err := r.Get(ctx, req.NamespacedName, &c); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !c.DeletionTimestamp.IsZero() {
		if controllerutil.ContainsFinalizer(&c, finalizer) {
			if err := r.cleanup(ctx, &c); err != nil {
				return ctrl.Result{}, err
			}
			controllerutil.RemoveFinalizer(&c, finalizer)
			return ctrl.Result{}, r.Update(ctx, &c)
		}
		return ctrl.Result{}, nil
	}
	if controllerutil.AddFinalizer(&c, finalizer) {
		if err := r.Update(ctx, &c); err != nil {
			return ctrl.Result{}, err
		}
	}
	if err := r.ensureRootSecret(ctx, &c); err != nil {
		return ctrl.Result{}, err
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: c.Name, Namespace: c.Namespace}}
	if _, err := controllerutil.CreateOrUpdate(ctx, r.Client, svc, func() error {
		svc.Labels = labels(&c)
		svc.Spec.ClusterIP = corev1.ClusterIPNone
		svc.Spec.Selector = labels(&c)
		svc.Spec.PublishNotReadyAddresses = true
		svc.Spec.Ports = []corev1.ServicePort{{Name: "mysql", Port: 3306, TargetPort: intstr.FromInt32(3306), Protocol: corev1.ProtocolTCP}}
		return controllerutil.SetControllerReference(&c, svc, r.Scheme)
	}); err != nil {
		return ctrl.Result{}, err
	}
	for i := int32(0); i < c.Spec.Replicas; i++ { // kept when scaled away, like a StatefulSet's
		pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("data-%s-%d", c.Name, i), Namespace: c.Namespace, Labels: labels(&c)}}
		err := r.Get(ctx, client.ObjectKeyFromObject(pvc), pvc)
		if apierrors.IsNotFound(err) {
			pvc.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
			pvc.Spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(c.Spec.StorageSize)}
			if err := controllerutil.SetControllerReference(&c, pvc, r.Scheme); err != nil {
				return ctrl.Result{}, err
			}
			err = r.Create(ctx, pvc)
		}
		if err != nil {
			return ctrl.Result{}, err
		}
	}
	var list corev1.PodList
	if err := r.List(ctx, &list, client.InNamespace(c.Namespace), client.MatchingLabels(labels(&c))); err != nil {
		return ctrl.Result{}, err
	}
	pods := map[int32]*corev1.Pod{}
	for i := range list.Items {
		if n, err := strconv.Atoi(strings.TrimPrefix(list.Items[i].Name, c.Name+"-")); err == nil {
			pods[int32(n)] = &list.Items[i]
		}
	}
	if err := r.stepPods(ctx, &c, pods); err != nil {
		return ctrl.Result{}, err
	}
	status := statusOf(&c, pods)
	if !equality.Semantic.DeepEqual(status, c.Status) {
		c.Status = status
		return ctrl.Result{}, r.Status().Update(ctx, &c)
	}
	return ctrl.Result{}, nil
}

func (r *Reconciler) ensureRootSecret(ctx context.Context, c *MySQLCluster) error {
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Name + "-root", Namespace: c.Namespace}}
	err := r.Get(ctx, client.ObjectKeyFromObject(secret), secret) // uncached: see main
	if !apierrors.IsNotFound(err) {
		return err
	}
	random := make([]byte, 18)
	if _, err := rand.Read(random); err != nil {
		return err
	}
	secret.Labels = labels(c)
	secret.Type = corev1.SecretTypeOpaque
	secret.StringData = map[string]string{"password": base64.RawURLEncoding.EncodeToString(random)}
	if err := controllerutil.SetControllerReference(c, secret, r.Scheme); err != nil {
		return err
	}
	if err := r.Create(ctx, secret); err != nil {
		return client.IgnoreAlreadyExists(err) // made by an earlier try
	}
	r.Recorder.Eventf(c, corev1.EventTypeNormal, "SecretCreated", "root password in Secret %s", secret.Name)
	return nil
}

// stepPods makes one change at a time, as a StatefulSet's OrderedReady.
func (r *Reconciler) stepPods(ctx context.Context, c *MySQLCluster, pods map[int32]*corev1.Pod) error {
	for _, p := range pods {
		if p.DeletionTimestamp != nil {
			return nil
		}
	}
	for i := int32(0); i < c.Spec.Replicas; i++ {
		p, ok := pods[i]
		switch {
		case !ok:
			pod := podFor(c, i)
			if err := controllerutil.SetControllerReference(c, pod, r.Scheme); err != nil {
				return err
			}
			return client.IgnoreAlreadyExists(r.Create(ctx, pod))
		case failed(p):
			return client.IgnoreNotFound(r.Delete(ctx, p))
		case !ready(p):
			return nil
		}
	}
	victim := int32(-1)
	for i := range pods {
		if i >= c.Spec.Replicas && i > victim {
			victim = i
		}
	}
	if victim < 0 {
		for i, p := range pods {
			if i < c.Spec.Replicas && outdated(c, i, p) && i > victim {
				victim = i
			}
		}
	}
	if victim >= 0 {
		return client.IgnoreNotFound(r.Delete(ctx, pods[victim]))
	}
	return nil
}

func statusOf(c *MySQLCluster, pods map[int32]*corev1.Pod) MySQLClusterStatus {
	wanted := c.Spec.Replicas
	var live, readyCount, serving, extra, stale int32
	for i, p := range pods {
		if i >= wanted {
			extra++
		}
		if p.DeletionTimestamp != nil {
			continue
		}
		live++
		if ready(p) {
			readyCount++
			if i < wanted {
				serving++
			}
		}
		if i < wanted && outdated(c, i, p) {
			stale++
		}
	}
	reason, message := "Complete", fmt.Sprintf("%d replicas of mysql:%s ready", wanted, c.Spec.Version)
	switch {
	case extra > 0:
		reason, message = "ScalingDown", fmt.Sprintf("%d replicas to remove", extra)
	case serving < wanted:
		reason, message = "ScalingUp", fmt.Sprintf("%d of %d replicas ready", serving, wanted)
	case stale > 0:
		reason, message = "Updating", fmt.Sprintf("%d replicas to update to mysql:%s", stale, c.Spec.Version)
	}
	status := *c.Status.DeepCopy()
	readyStatus, readyReason := metav1.ConditionFalse, "ReplicasNotReady"
	if serving == wanted {
		readyStatus, readyReason = metav1.ConditionTrue, "AllReplicasReady"
	}
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: "Ready", Status: readyStatus,
		Reason: readyReason, Message: fmt.Sprintf("%d of %d replicas ready", serving, wanted), ObservedGeneration: c.Generation})
	progressing := metav1.ConditionTrue
	if reason == "Complete" {
		progressing = metav1.ConditionFalse
	}
	meta.SetStatusCondition(&status.Conditions, metav1.Condition{Type: "Progressing", Status: progressing,
		Reason: reason, Message: message, ObservedGeneration: c.Generation})
	status.Phase = "Scaling"
	if reason == "Complete" {
		status.Phase = "Ready"
	} else if readyCount == 0 {
		status.Phase = "Pending"
	}
	status.Replicas, status.ReadyReplicas, status.ObservedGeneration = live, readyCount, c.Generation
	status.Selector = "app.kubernetes.io/instance=" + c.Name + ",app.kubernetes.io/name=mysql"
	if !equality.Semantic.DeepEqual(status, c.Status) {
		now := metav1.Now()
		status.LastUpdate = &now
	}
	return status
}

func (r *Reconciler) cleanup(ctx context.Context, c *MySQLCluster) error {
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: c.Name + "-root", Namespace: c.Namespace}}
	done := "deleted"
	if err := r.Delete(ctx, secret); apierrors.IsNotFound(err) {
		done = "already gone"
	} else if err != nil {
		return err
	}
	r.Recorder.Eventf(c, corev1.EventTypeNormal, "Cleanup", "Secret %s %s", secret.Name, done)
	return nil
}

func main() {
	var metricsAddr, probeAddr string
	var leaderElect bool
	flag.StringVar(&metricsAddr, "metrics-bind-address", ":8080", "")
	flag.StringVar(&probeAddr, "health-probe-bind-address", ":8081", "")
	flag.BoolVar(&leaderElect, "leader-elect", false, "one active process among replicas")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	scheme := runtime.NewScheme()
	schemeBuilder.Register(&MySQLCluster{}, &MySQLClusterList{})
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := schemeBuilder.AddToScheme(scheme); err != nil {
		panic(err)
	}
	mgr, err := ctrl.NewManager(ctrl.GetConfigOrDie(), ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		HealthProbeBindAddress: probeAddr,
		LeaderElection:         leaderElect,
		LeaderElectionID:       "mysql-operator.database.example.com",
		Client:                 client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		ctrl.Log.Error(err, "manager")
		os.Exit(1)
	}
	reconciler := &Reconciler{Client: mgr.GetClient(), Scheme: mgr.GetScheme(), Recorder: mgr.GetEventRecorderFor("mysql-operator")}
	err = ctrl.NewControllerManagedBy(mgr).
		For(&MySQLCluster{}).
		Owns(&corev1.Pod{}).
		Owns(&corev1.PersistentVolumeClaim{}).
		Owns(&corev1.Service{}).
		WithOptions(controller.Options{MaxConcurrentReconciles: 5}).
		Complete(reconciler)
	if err != nil {
		ctrl.Log.Error(err, "controller")
		os.Exit(1)
	}
	_ = mgr.AddHealthzCheck("healthz", healthz.Ping)
	_ = mgr.AddReadyzCheck("readyz", healthz.Ping)
	if err := mgr.Start(ctrl.SetupSignalHandler()); err != nil {
		ctrl.Log.Error(err, "manager")
		os.Exit(1)
	}
}

// --- what controller-gen's object generator writes (zz_generated.deepcopy.go) ---------------

func (in *MySQLClusterStatus) DeepCopy() *MySQLClusterStatus {
	out := *in
	if in.LastUpdate != nil {
		out.LastUpdate = in.LastUpdate.DeepCopy()
	}
	out.Conditions = make([]metav1.Condition, len(in.Conditions))
	for i := range in.Conditions {
		in.Conditions[i].DeepCopyInto(&out.Conditions[i])
	}
	return &out
}

func (in *MySQLCluster) DeepCopyObject() runtime.Object {
	out := *in
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Status = *in.Status.DeepCopy()
	return &out
}

func (in *MySQLClusterList) DeepCopyObject() runtime.Object {
	out := *in
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	out.Items = make([]MySQLCluster, len(in.Items))
	for i := range in.Items {
		out.Items[i] = *in.Items[i].DeepCopyObject().(*MySQLCluster)
	}
	return &out
}
