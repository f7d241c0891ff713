/*
 * iotcore_plugin.c - mosquitto 2.0 plugin (API v5) that makes mosquitto behave like the
 * device-facing broker of AWS IoT Core for the cloud_stubs local stub.
 *
 * Built on demand by cloud_stubs/broker/_plugin_build.py:
 *   gcc -shared -fPIC -O2 iotcore_plugin.c -o iotcore_plugin.so -lcrypto
 *
 * Configuration (mosquitto.conf, with per_listener_settings false):
 *   plugin                     /path/iotcore_plugin.so
 *   plugin_opt_registry        DIR/broker/registry.tsv   (required)
 *   plugin_opt_policies        DIR/broker/policies.tsv   (required)
 *   plugin_opt_log             DIR/broker/mosquitto.log  (the broker's log_dest file; used to
 *                                                         learn why a client disconnected)
 *   plugin_opt_presence        true|false   lifecycle events (default true)
 *   plugin_opt_v311_connect_deny   hangup|connack  (default hangup, like IoT Core)
 *   plugin_opt_v311_subscribe_deny suback|disconnect (default suback)
 *   plugin_opt_max_payload     bytes (default 131072 = 128 KB)
 *   plugin_opt_check_interval_ms  how often the two files are stat()ed (default 250)
 * Every listener must be TLS with require_certificate true and WITHOUT use_identity_as_username
 * (that option makes mosquitto skip plugin authentication). A client without a certificate is
 * refused, except when mosquitto re-checks an offline persistent session on SIGHUP.
 *
 * What it does
 * ------------
 * - CONNECT (MOSQ_EVT_BASIC_AUTH, called for every CONNECT): the principal is the client
 *   certificate. Its id is the SHA-256 of the DER (IoT Core's certificate id). The connection is
 *   refused when the certificate is unknown to registry.tsv, its status is not ACTIVE, the client
 *   id is longer than 128 bytes, or the policy does not allow `connect` for the client id.
 *   The username the client sent is ignored; on success the username becomes the certificate
 *   id, so later ACL checks (also for offline persistent sessions, wills and retained messages)
 *   find the principal by username.
 * - ACL (MOSQ_EVT_ACL_CHECK): publish / subscribe (the filter string, literally) / receive are
 *   evaluated against policies.tsv, IoT Core style: explicit Deny wins, default deny, `*` spans
 *   `/`, `?` is one character, `+` and `#` are literal. Variables
 *   ${iot:Connection.Thing.ThingName}, ${iot:ClientId}, ${iot:Certificate.Subject.CommonName};
 *   a statement whose variable has no value does not match.
 * - Registry and policies are re-read on SIGHUP (MOSQ_EVT_RELOAD) and whenever either file's
 *   inode, size or mtime changes (checked at every CONNECT and at most every check_interval_ms
 *   from MOSQ_EVT_TICK). A connected client whose
 *   certificate is no longer ACTIVE (or no longer in the registry) is disconnected and cannot
 *   reconnect; re-activation lets it connect again. No broker restart.
 * - Lifecycle events $aws/events/presence/{connected,disconnected}/<clientId> (QoS 1, not
 *   retained) with IoT Core's JSON fields; versionNumber counts per client id from 0 (in memory,
 *   forgotten after an hour without a connection, like IoT Core's reset).
 * - Requester identity and private responses, for the stub's services (one privileged MQTT 5
 *   client of role `service`, cloud_stubs/services/_runtime.py), from MOSQ_EVT_MESSAGE (every
 *   client PUBLISH, before it is stored and routed):
 *   - a PUBLISH of any other role loses every user property named x-iot-client-id or
 *     x-iot-deliver-to (on every topic: they cannot be forged), and a PUBLISH of theirs to a
 *     topic starting with `$aws/` gets the user property x-iot-client-id = the publisher's
 *     client id, also when it came over MQTT 3.1.1 (MQTT 5 subscribers see it);
 *   - a service PUBLISH carrying x-iot-deliver-to = X is delivered to the client with client id
 *     X only (and to every service-role subscriber), the way IoT Core answers only the requester
 *     for Jobs and Fleet Provisioning responses; the property itself is removed, as IoT Core
 *     sends none. mosquitto 2.0.11 gives MOSQ_EVT_ACL_CHECK no properties, so the message is
 *     remembered in MOSQ_EVT_MESSAGE and recognised in the receive checks that route it
 *     (synchronously, right after) by its stored payload buffer, length, topic and payload hash.
 * - Subscriptions, IoT Core style. mosquitto 2.0.11 runs one receive check (MOSQ_ACL_READ) per
 *   matching subscription and tells a plugin neither which subscription it is for nor what a
 *   client is subscribed to, so the plugin keeps each session's filters itself (per client id,
 *   from the subscribe/unsubscribe checks; they outlive the connection like a persistent
 *   session; at a connection's first ACL check an empty subscription table of mosquitto's -
 *   mosquitto_client_sub_count() 0 - means a new session and clears them):
 *   - one copy per connection (§7.2): a message is routed synchronously, all its receive checks
 *     in a row with the stored message's payload buffer, length, topic, QoS and retain flag, and
 *     any other plugin callback comes before the next routing (MOSQ_EVT_MESSAGE for a client
 *     PUBLISH, the WRITE check of a will, BASIC_AUTH before a resumed session's queue is
 *     re-checked, TICK before the plugin's own publishes - presence events - are routed at the
 *     start of the next loop). The first receive check of a connection (or offline session) for
 *     the routed message is allowed, later ones are denied. mosquitto already did this for
 *     MQTT 3.1.1 clients (allow_duplicate_messages false), not for MQTT 5 ones;
 *   - `a/#` does not match `a` (§5.3): a receive check is denied when none of the session's
 *     filters matches the topic the IoT Core way;
 *   - retained messages only for a filter equal to the topic, none for `$share/` (§5.5): the
 *     receive checks of the stored retained messages follow the subscribe check of their filter
 *     synchronously (handle__subscribe -> sub__add -> retain__queue);
 *   - at most 50 subscriptions per session for every role but `service` (§5.7): the 51st filter
 *     is denied (SUBACK 0x87, MQTT 3.1.1 0x80); a filter already subscribed does not count again,
 *     an unsubscribe frees its place.
 *
 * Differences from AWS IoT Core that remain (for the stub's documentation)
 * ------------------------------------------------------------------------
 * - MQTT 3.1.1 CONNECT refused: the connection is closed without CONNACK, as IoT Core does
 *   (option v311_connect_deny connack sends CONNACK return code 5 instead).
 * - MQTT 3.1.1 PUBLISH denied: the connection is closed (as IoT Core). MQTT 5: PUBACK 0x87 for
 *   QoS 1, QoS 0 dropped silently.
 * - MQTT 5 QoS 1 PUBLISH that no subscription matches: mosquitto answers PUBACK 0x10 (no
 *   matching subscribers, a success code); IoT Core answers 0x00.
 * - MQTT 3.1.1 SUBSCRIBE denied: SUBACK 0x80 (option v311_subscribe_deny disconnect closes the
 *   connection like older IoT Core). MQTT 5: SUBACK 0x87.
 * - Topic rules: a publish to a topic longer than 256 bytes or with more than 7 slashes (not
 *   counting a $aws/rules/<rule>/ prefix), or a subscription to such a filter (not counting a
 *   $share/<group>/ prefix), is treated like a policy denial (IoT Core answers 0x90 / 0x8F).
 * - Payload over max_payload: the client is disconnected (CLIENT_ERROR), as IoT Core does.
 * - QoS 2 PUBLISH: the connection is closed (CLIENT_ERROR); IoT Core ignores it (no PUBACK).
 *   QoS 2 SUBSCRIBE is granted QoS 1 and an MQTT 5 will at QoS 2 gets CONNACK 0x9B, as on
 *   IoT Core.
 * - Client id over 128 bytes: CONNACK 0x87 (IoT Core: 0x85 client identifier not valid).
 * - Session takeover: mosquitto 2.0.11 closes the old connection without sending MQTT 5
 *   DISCONNECT 0x8E; the lifecycle event still says DUPLICATE_CLIENTID.
 * - Certificate revoked/deactivated while connected: the client is disconnected (MQTT 5 gets
 *   DISCONNECT 0x98 administrative action, or none when the check happens on SIGHUP); the
 *   lifecycle reason is AUTH_ERROR.
 * - MQTT 5 empty client id: mosquitto assigns one (the generated config uses auto_id_prefix
 *   $GEN/ to look like IoT Core); a client may still connect with a self-chosen $GEN/ id.
 * - Disconnect reasons come from mosquitto's own log line for the disconnect (mosquitto 2.0.11
 *   passes no reason to plugins): clean DISCONNECT -> CLIENT_INITIATED_DISCONNECT, keep-alive ->
 *   MQTT_KEEP_ALIVE_TIMEOUT, protocol errors / oversize packets -> CLIENT_ERROR, socket closed or
 *   errors -> CONNECTION_LOST, duplicate client id -> DUPLICATE_CLIENTID, our denials ->
 *   AUTH_ERROR, other administrative kicks -> SERVER_INITIATED_DISCONNECT. Without the log file
 *   (plugin_opt_log) every unexplained disconnect is CONNECTION_LOST.
 * - No connect-failure, subscribe/unsubscribe lifecycle events; no thingName field.
 * - x-iot-client-id (IoT Core adds no user property) is on the stored message, so every MQTT 5
 *   subscriber of a device's `$aws/` publish sees it, not only the service (e.g. a device
 *   subscribed to its own shadow/update). Devices' own user properties named x-iot-client-id /
 *   x-iot-deliver-to are dropped on every topic (IoT Core passes them through).
 * - A service message addressed with x-iot-deliver-to is never retained (the retain flag is
 *   cleared: a retained copy would later reach every subscriber). Responses that IoT Core sends
 *   to the requester only but that the service publishes without x-iot-deliver-to (e.g. from an
 *   MQTT 3.1.1 service connection, which has no properties) reach every authorized subscriber.
 * - Not enforced: 8 filters per SUBSCRIBE (the plugin sees each filter's subscribe check but
 *   not where one SUBSCRIBE packet ends, and several packets can be handled back to back
 *   without any other callback in between), publish rate and throughput quotas, 1 CONNECT/s per
 *   client id, keep-alive lower bound (30 s) and, for MQTT 3.1.1, the 1200 s upper bound
 *   (mosquitto clamps it for MQTT 5 only).
 * - Subscription quota: the 51st subscription gets SUBACK 0x87 (MQTT 5) / 0x80 (MQTT 3.1.1), the
 *   connection stays up. It counts the session's subscriptions, so a resumed persistent session
 *   keeps its count.
 * - One copy per connection: the copy a client gets has the QoS, subscription identifier and
 *   retain-as-published option of the first matching subscription mosquitto checks, not
 *   necessarily the highest QoS. A shared-subscription group whose chosen member already got the
 *   message through another subscription delivers it to no other member.
 * - Subscriptions of a persistent session the plugin does not know (the broker restarted from
 *   its persistence file, or the session outlived the plugin's one-hour record of the client
 *   id) follow MQTT matching (`a/#` matches `a`) until the client starts a new session; they do
 *   not count towards the 50 either.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#define CERT_ID_LEN 64
#define MAX_CLIENT_ID 128
#define MAX_TOPIC_BYTES 256
#define MAX_TOPIC_SLASHES 7
#define MAX_SUBSCRIPTIONS 50 /* per connection (session), device and claim roles */

/* MQTT 5 user properties between the plugin and the stub's services (cloud_stubs/services). */
#define PROP_CLIENT_ID "x-iot-client-id"
#define PROP_DELIVER_TO "x-iot-deliver-to"
#define ROLE_SERVICE "service"

/* ------------------------------------------------------------------------------------------ */
/* small utilities                                                                             */

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if(!p){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotcore: out of memory");
		abort();
	}
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if(!q){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotcore: out of memory");
		abort();
	}
	return q;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = xmalloc(n);
	memcpy(d, s, n);
	return d;
}

static long long now_ms_monotonic(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000L;
}

static long long now_ms_epoch(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (long long)ts.tv_sec * 1000LL + ts.tv_nsec / 1000000L;
}

/* Growable byte buffer. */
typedef struct {
	char *p;
	size_t len, cap;
} sbuf;

static void sb_reserve(sbuf *b, size_t extra)
{
	if(b->len + extra + 1 > b->cap){
		size_t cap = b->cap ? b->cap : 256;
		while(cap < b->len + extra + 1) cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
}

static void sb_add(sbuf *b, const char *s, size_t n)
{
	sb_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_json_str(sbuf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	sb_add(b, "\"", 1);
	for(const unsigned char *c = (const unsigned char *)s; *c; c++){
		switch(*c){
			case '"': sb_add(b, "\\\"", 2); break;
			case '\\': sb_add(b, "\\\\", 2); break;
			case '\n': sb_add(b, "\\n", 2); break;
			case '\r': sb_add(b, "\\r", 2); break;
			case '\t': sb_add(b, "\\t", 2); break;
			default:
				if(*c < 0x20){
					char esc[6] = {'\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 0xF]};
					sb_add(b, esc, 6);
				}else{
					sb_add(b, (const char *)c, 1);
				}
		}
	}
	sb_add(b, "\"", 1);
}

/* Chained hash map with byte-string keys (copied) and pointer values. */
typedef struct hent {
	struct hent *next;
	uint64_t h;
	size_t klen;
	void *val;
	char key[];
} hent;

typedef struct {
	hent **b;
	size_t nb, n;
} hmap;

static uint64_t hash_bytes(const void *k, size_t n)
{
	const unsigned char *p = k;
	uint64_t h = 1469598103934665603ULL;
	for(size_t i = 0; i < n; i++){
		h ^= p[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static void hmap_grow(hmap *m)
{
	size_t nb = m->nb ? m->nb * 2 : 64;
	hent **b = xmalloc(nb * sizeof(*b));
	memset(b, 0, nb * sizeof(*b));
	for(size_t i = 0; i < m->nb; i++){
		hent *e = m->b[i];
		while(e){
			hent *next = e->next;
			size_t j = e->h & (nb - 1);
			e->next = b[j];
			b[j] = e;
			e = next;
		}
	}
	free(m->b);
	m->b = b;
	m->nb = nb;
}

static hent *hmap_find(hmap *m, const void *k, size_t kl)
{
	if(!m->nb) return NULL;
	uint64_t h = hash_bytes(k, kl);
	for(hent *e = m->b[h & (m->nb - 1)]; e; e = e->next){
		if(e->h == h && e->klen == kl && !memcmp(e->key, k, kl)) return e;
	}
	return NULL;
}

static void *hmap_get(hmap *m, const void *k, size_t kl)
{
	hent *e = hmap_find(m, k, kl);
	return e ? e->val : NULL;
}

/* Insert or replace; returns the previous value (or NULL). */
static void *hmap_put(hmap *m, const void *k, size_t kl, void *v)
{
	hent *e = hmap_find(m, k, kl);
	if(e){
		void *old = e->val;
		e->val = v;
		return old;
	}
	if(m->n + 1 > m->nb) hmap_grow(m);
	e = xmalloc(sizeof(hent) + kl + 1);
	e->h = hash_bytes(k, kl);
	e->klen = kl;
	e->val = v;
	memcpy(e->key, k, kl);
	e->key[kl] = '\0';
	size_t j = e->h & (m->nb - 1);
	e->next = m->b[j];
	m->b[j] = e;
	m->n++;
	return NULL;
}

/* Remove; returns the value (or NULL). */
static void *hmap_del(hmap *m, const void *k, size_t kl)
{
	if(!m->nb) return NULL;
	uint64_t h = hash_bytes(k, kl);
	hent **pp = &m->b[h & (m->nb - 1)];
	while(*pp){
		hent *e = *pp;
		if(e->h == h && e->klen == kl && !memcmp(e->key, k, kl)){
			void *v = e->val;
			*pp = e->next;
			free(e);
			m->n--;
			return v;
		}
		pp = &e->next;
	}
	return NULL;
}

static void hmap_clear(hmap *m, void (*free_val)(void *))
{
	for(size_t i = 0; i < m->nb; i++){
		hent *e = m->b[i];
		while(e){
			hent *next = e->next;
			if(free_val) free_val(e->val);
			free(e);
			e = next;
		}
	}
	free(m->b);
	m->b = NULL;
	m->nb = m->n = 0;
}

/* Remove every entry (values are not freed); small bucket arrays are kept for reuse. */
static void hmap_empty(hmap *m)
{
	if(!m->n) return;
	if(m->nb > 1024){
		hmap_clear(m, NULL);
		return;
	}
	for(size_t i = 0; i < m->nb; i++){
		hent *e = m->b[i];
		while(e){
			hent *next = e->next;
			free(e);
			e = next;
		}
		m->b[i] = NULL;
	}
	m->n = 0;
}

/* ------------------------------------------------------------------------------------------ */
/* registry.tsv                                                                                */

enum cert_status { ST_ACTIVE, ST_INACTIVE, ST_REVOKED, ST_PENDING, ST_OTHER };

typedef struct {
	const char *id;
	const char *role;
	const char *thing; /* NULL when "-" */
	enum cert_status status;
} reg_row;

typedef struct {
	reg_row *rows;
	size_t n, cap;
	char *buf; /* the file content, tokenized in place; rows point into it */
} registry_t;

/* Policy statement: a pattern compiled into tokens. */
enum tok_kind { TK_LIT, TK_STAR, TK_QMARK, TK_THING, TK_CLIENT, TK_CN };
enum action { ACT_CONNECT, ACT_PUBLISH, ACT_SUBSCRIBE, ACT_RECEIVE, ACT_COUNT };

typedef struct {
	enum tok_kind kind;
	const char *s;
	size_t len;
} ptoken;

typedef struct {
	bool deny;
	bool never; /* unknown variable: never matches */
	enum action action;
	const char *role;
	ptoken *toks;
	size_t ntoks;
} stmt;

typedef struct {
	stmt *stmts;
	size_t n, cap;
	char *buf;
} policy_t;

/* One authenticated, connected client (keyed by its struct mosquitto pointer). */
typedef struct {
	struct mosquitto *ctx;
	char *client_id;
	char cert_id[CERT_ID_LEN + 1];
	char session_id[33];
	long long version;
	const char *reason; /* set when we know why it will disconnect */
	bool presence;      /* events for this client id */
	bool subs_synced;   /* the session's subscriptions were checked (subs_sync) */
} conn_t;

/* Per client id: lifecycle version counter, the current connection and the subscriptions of its
 * session (they outlive a connection when the session is persistent). */
typedef struct {
	long long next_version;
	struct mosquitto *current;
	long long offline_since_ms; /* monotonic; meaningful while current == NULL */
	hmap filters;               /* topic filter -> (void *)1, as the client sent it */
	size_t parent_hash_filters; /* how many of them end in "/#" */
	bool subs_known;            /* filters holds every subscription of the session (or more) */
} client_rec;

/* IoT Core resets versionNumber after about an hour without a connection. */
#define VERSION_RESET_MS (3600LL * 1000LL)
#define PRUNE_INTERVAL_MS (60LL * 1000LL)

typedef struct {
	char *client_id;
	char cert_id[CERT_ID_LEN + 1];
	const char *reason;
} kick_t;

/* The message being routed right now when the service addressed it to one client
 * (x-iot-deliver-to). mosquitto 2.0.11 passes no properties to MOSQ_EVT_ACL_CHECK, so the
 * receive checks recognise the message by its payload pointer (the stored message's own buffer),
 * length, topic and a hash of the payload. */
typedef struct {
	bool active;
	const void *payload;
	uint32_t payloadlen;
	uint64_t hash;
	char *topic;
	char *deliver_to;
} target_t;

/* The message whose receive checks are running (one per matching subscription of every
 * subscriber) and the connections that were allowed to receive it: a connection gets one copy,
 * like on IoT Core (mosquitto gives an MQTT 5 client one per matching subscription). Any other
 * callback ends it: every routing follows one synchronously (see routing_clear). */
typedef struct {
	bool active;
	const void *payload;
	uint32_t payloadlen;
	uint64_t sample; /* hash of the payload's length, first and last bytes */
	uint8_t qos;
	bool retain;
	char *topic;
	hmap seen; /* struct mosquitto * -> (void *)1 */
} route_t;

/* The filter of the SUBSCRIBE being handled: mosquitto sends it the stored retained messages
 * right after the subscribe check (handle__subscribe -> sub__add -> retain__queue). */
typedef struct {
	struct mosquitto *client;
	char *filter;
} pending_sub_t;

typedef struct {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	bool exists;
} file_sig;

static struct {
	mosquitto_plugin_id_t *id;
	char *registry_path;
	char *policies_path;
	char *log_path;
	bool presence;
	bool v311_connect_hangup;
	bool v311_subscribe_disconnect;
	long max_payload;
	long check_interval_ms;

	registry_t reg;
	policy_t pol;
	file_sig reg_sig, pol_sig;
	long long last_check_ms;
	long long last_prune_ms;

	hmap conns;   /* &ctx -> conn_t* */
	hmap clients; /* client id -> client_rec* */
	hmap cns;     /* certificate id -> common name (char*) */

	kick_t *kicks;
	size_t nkicks, capkicks;

	sbuf exp_chars; /* expansion buffers for pattern matching */
	sbuf exp_wild;

	target_t target;
	route_t route;
	pending_sub_t psub;
	bool in_kick; /* inside mosquitto_kick_client_by_clientid (it re-checks subscriptions) */
} g;

static const char *R_CLIENT_INITIATED = "CLIENT_INITIATED_DISCONNECT";
static const char *R_CONNECTION_LOST = "CONNECTION_LOST";
static const char *R_KEEPALIVE = "MQTT_KEEP_ALIVE_TIMEOUT";
static const char *R_DUPLICATE = "DUPLICATE_CLIENTID";
static const char *R_AUTH_ERROR = "AUTH_ERROR";
static const char *R_CLIENT_ERROR = "CLIENT_ERROR";
static const char *R_SERVER_ERROR = "SERVER_ERROR";
static const char *R_SERVER_INITIATED = "SERVER_INITIATED_DISCONNECT";

static char *read_file(const char *path, bool *missing)
{
	*missing = false;
	FILE *f = fopen(path, "rb");
	if(!f){
		if(errno == ENOENT) *missing = true;
		return NULL;
	}
	sbuf b = {0};
	char chunk[65536];
	size_t n;
	while((n = fread(chunk, 1, sizeof(chunk), f)) > 0){
		sb_add(&b, chunk, n);
	}
	bool err = ferror(f);
	fclose(f);
	if(err){
		free(b.p);
		return NULL;
	}
	if(!b.p) b.p = xstrdup("");
	return b.p;
}

/* Split buf in place into lines; calls fn for every non-empty, non-comment line. */
static void for_each_line(char *buf, void (*fn)(char *line, size_t lineno, void *arg), void *arg)
{
	size_t lineno = 0;
	char *p = buf;
	while(*p){
		char *nl = strchr(p, '\n');
		char *next = nl ? nl + 1 : p + strlen(p);
		if(nl) *nl = '\0';
		size_t len = strlen(p);
		if(len && p[len - 1] == '\r') p[--len] = '\0';
		lineno++;
		if(len && p[0] != '#') fn(p, lineno, arg);
		p = next;
	}
}

/* Split a line at tabs into exactly n fields; returns false when the count differs. */
static bool split_tabs(char *line, char **fields, int n)
{
	int i = 0;
	char *p = line;
	while(i < n){
		fields[i++] = p;
		char *t = strchr(p, '\t');
		if(!t) break;
		*t = '\0';
		p = t + 1;
	}
	return i == n && strchr(fields[n - 1], '\t') == NULL;
}

static void reg_line(char *line, size_t lineno, void *arg)
{
	registry_t *r = arg;
	char *f[4];
	if(!split_tabs(line, f, 4) || strlen(f[0]) != CERT_ID_LEN){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: %s:%zu: malformed line ignored",
				g.registry_path, lineno);
		return;
	}
	reg_row row;
	for(char *c = f[0]; *c; c++){
		if(*c >= 'A' && *c <= 'F') *c = (char)(*c - 'A' + 'a');
	}
	row.id = f[0];
	if(!strcmp(f[1], "ACTIVE")) row.status = ST_ACTIVE;
	else if(!strcmp(f[1], "INACTIVE")) row.status = ST_INACTIVE;
	else if(!strcmp(f[1], "REVOKED")) row.status = ST_REVOKED;
	else if(!strcmp(f[1], "PENDING_ACTIVATION")) row.status = ST_PENDING;
	else row.status = ST_OTHER;
	row.role = f[2];
	row.thing = (!strcmp(f[3], "-") || !f[3][0]) ? NULL : f[3];
	if(r->n == r->cap){
		r->cap = r->cap ? r->cap * 2 : 1024;
		r->rows = xrealloc(r->rows, r->cap * sizeof(reg_row));
	}
	r->rows[r->n++] = row;
}

static int reg_cmp(const void *a, const void *b)
{
	return strcmp(((const reg_row *)a)->id, ((const reg_row *)b)->id);
}

static void registry_free(registry_t *r)
{
	free(r->rows);
	free(r->buf);
	memset(r, 0, sizeof(*r));
}

static const reg_row *registry_lookup(const char *cert_id)
{
	if(!cert_id || !g.reg.n) return NULL;
	reg_row key = {.id = cert_id};
	return bsearch(&key, g.reg.rows, g.reg.n, sizeof(reg_row), reg_cmp);
}

/* Returns 0 on success (table replaced), -1 on I/O error (old table kept). */
static int registry_load(void)
{
	bool missing;
	char *buf = read_file(g.registry_path, &missing);
	if(!buf && !missing){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotcore: cannot read %s: %s", g.registry_path,
				strerror(errno));
		return -1;
	}
	registry_t r = {0};
	if(missing){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: %s does not exist: no certificate may connect",
				g.registry_path);
		r.buf = xstrdup("");
	}else{
		r.buf = buf;
		for_each_line(r.buf, reg_line, &r);
		qsort(r.rows, r.n, sizeof(reg_row), reg_cmp);
	}
	registry_free(&g.reg);
	g.reg = r;
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotcore: loaded %zu certificates from %s", r.n,
			g.registry_path);
	return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* policies.tsv                                                                                */

static const struct {
	const char *name;
	enum tok_kind kind;
} VARS[] = {
	{"${iot:Connection.Thing.ThingName}", TK_THING},
	{"${iot:ClientId}", TK_CLIENT},
	{"${iot:Certificate.Subject.CommonName}", TK_CN},
};

static void compile_pattern(stmt *s, const char *pat)
{
	size_t cap = 8;
	s->toks = xmalloc(cap * sizeof(ptoken));
	s->ntoks = 0;
	const char *p = pat;
	const char *lit = NULL;
#define PUSH(k, str, n) do { \
		if(s->ntoks == cap){ cap *= 2; s->toks = xrealloc(s->toks, cap * sizeof(ptoken)); } \
		s->toks[s->ntoks].kind = (k); s->toks[s->ntoks].s = (str); s->toks[s->ntoks].len = (n); \
		s->ntoks++; \
	} while(0)
#define FLUSH() do { if(lit){ PUSH(TK_LIT, lit, (size_t)(p - lit)); lit = NULL; } } while(0)
	while(*p){
		if(*p == '*'){
			FLUSH();
			PUSH(TK_STAR, p, 1);
			p++;
		}else if(*p == '?'){
			FLUSH();
			PUSH(TK_QMARK, p, 1);
			p++;
		}else if(p[0] == '$' && p[1] == '{'){
			FLUSH();
			const char *end = strchr(p, '}');
			bool known = false;
			if(end){
				size_t n = (size_t)(end - p) + 1;
				for(size_t i = 0; i < sizeof(VARS) / sizeof(VARS[0]); i++){
					if(strlen(VARS[i].name) == n && !strncmp(VARS[i].name, p, n)){
						PUSH(VARS[i].kind, p, n);
						known = true;
						break;
					}
				}
			}
			if(!known){
				s->never = true;
				return;
			}
			p = end + 1;
		}else{
			if(!lit) lit = p;
			p++;
		}
	}
	FLUSH();
#undef FLUSH
#undef PUSH
}

static void pol_line(char *line, size_t lineno, void *arg)
{
	policy_t *pol = arg;
	char *f[4];
	if(!split_tabs(line, f, 4)){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: %s:%zu: expected 4 tab-separated fields",
				g.policies_path, lineno);
		return;
	}
	stmt s;
	memset(&s, 0, sizeof(s));
	if(!strcmp(f[0], "Allow")) s.deny = false;
	else if(!strcmp(f[0], "Deny")) s.deny = true;
	else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: %s:%zu: unknown effect '%s'",
				g.policies_path, lineno, f[0]);
		return;
	}
	if(!strcmp(f[2], "connect")) s.action = ACT_CONNECT;
	else if(!strcmp(f[2], "publish")) s.action = ACT_PUBLISH;
	else if(!strcmp(f[2], "subscribe")) s.action = ACT_SUBSCRIBE;
	else if(!strcmp(f[2], "receive")) s.action = ACT_RECEIVE;
	else{
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: %s:%zu: unknown action '%s'",
				g.policies_path, lineno, f[2]);
		return;
	}
	s.role = f[1];
	compile_pattern(&s, f[3]);
	if(s.never){
		mosquitto_log_printf(MOSQ_LOG_WARNING,
				"iotcore: %s:%zu: unknown policy variable in '%s': statement never matches",
				g.policies_path, lineno, f[3]);
	}
	if(pol->n == pol->cap){
		pol->cap = pol->cap ? pol->cap * 2 : 64;
		pol->stmts = xrealloc(pol->stmts, pol->cap * sizeof(stmt));
	}
	pol->stmts[pol->n++] = s;
}

static void policy_free(policy_t *p)
{
	for(size_t i = 0; i < p->n; i++) free(p->stmts[i].toks);
	free(p->stmts);
	free(p->buf);
	memset(p, 0, sizeof(*p));
}

static int policy_load(void)
{
	bool missing;
	char *buf = read_file(g.policies_path, &missing);
	if(!buf && !missing){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotcore: cannot read %s: %s", g.policies_path,
				strerror(errno));
		return -1;
	}
	policy_t p = {0};
	if(missing){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: %s does not exist: everything is denied",
				g.policies_path);
		p.buf = xstrdup("");
	}else{
		p.buf = buf;
		for_each_line(p.buf, pol_line, &p);
	}
	policy_free(&g.pol);
	g.pol = p;
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotcore: loaded %zu policy statements from %s", p.n,
			g.policies_path);
	return 0;
}

/* Length in bytes of the UTF-8 character starting at s (at least 1, at most remaining). */
static size_t u8len(const char *s, size_t remaining)
{
	unsigned char c = (unsigned char)s[0];
	size_t n = 1;
	if(c >= 0xF0) n = 4;
	else if(c >= 0xE0) n = 3;
	else if(c >= 0xC0) n = 2;
	return n > remaining ? remaining : n;
}

enum { W_LIT = 0, W_STAR = 1, W_QMARK = 2 };

/* Glob match: '*' any run (incl. '/', empty), '?' one character, the rest literal. */
static bool glob_match(const char *p, const char *w, size_t pn, const char *s, size_t sn)
{
	size_t pi = 0, si = 0, star_p = (size_t)-1, star_s = 0;
	while(si < sn){
		if(pi < pn && w[pi] == W_QMARK){
			si += u8len(s + si, sn - si);
			pi++;
		}else if(pi < pn && w[pi] == W_STAR){
			star_p = pi++;
			star_s = si;
		}else if(pi < pn && w[pi] == W_LIT && p[pi] == s[si]){
			pi++;
			si++;
		}else if(star_p != (size_t)-1){
			pi = star_p + 1;
			star_s += u8len(s + star_s, sn - star_s);
			si = star_s;
		}else{
			return false;
		}
	}
	while(pi < pn && w[pi] == W_STAR) pi++;
	return pi == pn;
}

typedef struct {
	const char *role;
	const char *thing;
	const char *client_id;
	const char *cn;
} principal;

static void exp_add(const char *s, size_t n, char wild)
{
	sb_reserve(&g.exp_chars, n);
	sb_reserve(&g.exp_wild, n);
	memcpy(g.exp_chars.p + g.exp_chars.len, s, n);
	memset(g.exp_wild.p + g.exp_wild.len, wild, n);
	g.exp_chars.len += n;
	g.exp_wild.len += n;
}

static bool stmt_matches(const stmt *s, const principal *pr, const char *resource)
{
	g.exp_chars.len = 0;
	g.exp_wild.len = 0;
	for(size_t i = 0; i < s->ntoks; i++){
		const ptoken *t = &s->toks[i];
		const char *v;
		switch(t->kind){
			case TK_LIT: exp_add(t->s, t->len, W_LIT); break;
			case TK_STAR: exp_add("*", 1, W_STAR); break;
			case TK_QMARK: exp_add("?", 1, W_QMARK); break;
			case TK_THING:
			case TK_CLIENT:
			case TK_CN:
				v = t->kind == TK_THING ? pr->thing : t->kind == TK_CLIENT ? pr->client_id : pr->cn;
				if(!v) return false;
				/* substituted values are literal, even if they contain '*' or '?' */
				exp_add(v, strlen(v), W_LIT);
				break;
		}
	}
	if(!g.exp_chars.p) exp_add("", 0, W_LIT);
	return glob_match(g.exp_chars.p, g.exp_wild.p, g.exp_chars.len, resource, strlen(resource));
}

static bool policy_allows(const principal *pr, enum action action, const char *resource)
{
	bool allowed = false;
	for(size_t i = 0; i < g.pol.n; i++){
		const stmt *s = &g.pol.stmts[i];
		if(s->action != action || s->never || strcmp(s->role, pr->role)) continue;
		if(!stmt_matches(s, pr, resource)) continue;
		if(s->deny) return false;
		allowed = true;
	}
	return allowed;
}

/* ------------------------------------------------------------------------------------------ */
/* file change detection                                                                       */

static file_sig sig_of(const char *path)
{
	file_sig s;
	memset(&s, 0, sizeof(s));
	struct stat st;
	if(stat(path, &st) == 0){
		s.exists = true;
		s.dev = st.st_dev;
		s.ino = st.st_ino;
		s.size = st.st_size;
		s.mtime = st.st_mtim;
	}
	return s;
}

static bool sig_eq(const file_sig *a, const file_sig *b)
{
	return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size
		&& a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* ------------------------------------------------------------------------------------------ */
/* connections, kicks, presence                                                                */

static conn_t *conn_get(struct mosquitto *ctx)
{
	return hmap_get(&g.conns, &ctx, sizeof(ctx));
}

static void conn_free(void *v)
{
	conn_t *c = v;
	if(!c) return;
	free(c->client_id);
	free(c);
}

static void client_rec_free(void *v)
{
	client_rec *cr = v;
	if(!cr) return;
	hmap_clear(&cr->filters, NULL);
	free(cr);
}

/* Forget a connection (and that it is the current one of its client id). */
static void conn_remove(struct mosquitto *ctx)
{
	conn_t *c = hmap_del(&g.conns, &ctx, sizeof(ctx));
	if(!c) return;
	client_rec *cr = hmap_get(&g.clients, c->client_id, strlen(c->client_id));
	if(cr && cr->current == ctx){
		cr->current = NULL;
		cr->offline_since_ms = now_ms_monotonic();
	}
	conn_free(c);
}

static void queue_kick(const conn_t *c, const char *reason)
{
	for(size_t i = 0; i < g.nkicks; i++){
		if(!strcmp(g.kicks[i].client_id, c->client_id) && !strcmp(g.kicks[i].cert_id, c->cert_id)){
			return;
		}
	}
	if(g.nkicks == g.capkicks){
		g.capkicks = g.capkicks ? g.capkicks * 2 : 16;
		g.kicks = xrealloc(g.kicks, g.capkicks * sizeof(kick_t));
	}
	kick_t *k = &g.kicks[g.nkicks++];
	k->client_id = xstrdup(c->client_id);
	memcpy(k->cert_id, c->cert_id, sizeof(k->cert_id));
	k->reason = reason;
}

/* Kicks are never done from inside a callback about the same client: only from TICK/RELOAD. */
static void run_kicks(void)
{
	if(!g.nkicks) return;
	kick_t *kicks = g.kicks;
	size_t n = g.nkicks;
	g.kicks = NULL;
	g.nkicks = g.capkicks = 0;
	for(size_t i = 0; i < n; i++){
		client_rec *cr = hmap_get(&g.clients, kicks[i].client_id, strlen(kicks[i].client_id));
		conn_t *c = cr && cr->current ? conn_get(cr->current) : NULL;
		if(c && !strcmp(c->cert_id, kicks[i].cert_id)){
			c->reason = kicks[i].reason;
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotcore: disconnecting client %s: certificate %.12s... is no longer ACTIVE",
					c->client_id, c->cert_id);
			/* for a persistent session mosquitto re-checks its subscriptions in there */
			g.in_kick = true;
			mosquitto_kick_client_by_clientid(kicks[i].client_id, true);
			g.in_kick = false;
		}
		free(kicks[i].client_id);
	}
	free(kicks);
}

static bool cert_usable(const reg_row *row)
{
	return row && row->status == ST_ACTIVE;
}

static void scan_conn(void *v)
{
	conn_t *c = v;
	if(!cert_usable(registry_lookup(c->cert_id))) queue_kick(c, R_AUTH_ERROR);
}

static void scan_revocations(void)
{
	for(size_t i = 0; i < g.conns.nb; i++){
		for(hent *e = g.conns.b[i]; e; e = e->next) scan_conn(e->val);
	}
}

static void check_files(bool force)
{
	file_sig rs = sig_of(g.registry_path);
	file_sig ps = sig_of(g.policies_path);
	bool reg_changed = force || !sig_eq(&rs, &g.reg_sig);
	if(reg_changed && registry_load() == 0) g.reg_sig = rs;
	if((force || !sig_eq(&ps, &g.pol_sig)) && policy_load() == 0) g.pol_sig = ps;
	if(reg_changed) scan_revocations();
}

static void random_hex(char *out, size_t nbytes)
{
	static const char hex[] = "0123456789abcdef";
	unsigned char raw[32];
	if(nbytes > sizeof(raw)) nbytes = sizeof(raw);
	if(RAND_bytes(raw, (int)nbytes) != 1){
		for(size_t i = 0; i < nbytes; i++) raw[i] = (unsigned char)(rand() & 0xFF);
	}
	for(size_t i = 0; i < nbytes; i++){
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 0xF];
	}
	out[2 * nbytes] = '\0';
}

static void publish_event(const char *kind, const char *client_id, sbuf *payload)
{
	sbuf topic = {0};
	sb_str(&topic, "$aws/events/presence/");
	sb_str(&topic, kind);
	sb_str(&topic, "/");
	sb_str(&topic, client_id);
	int rc = mosquitto_broker_publish_copy(NULL, topic.p, (int)payload->len, payload->p, 1, false,
			NULL);
	if(rc != MOSQ_ERR_SUCCESS){
		mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: could not publish %s event for %s (%d)",
				kind, client_id, rc);
	}
	free(topic.p);
}

static void publish_connected(const conn_t *c, const char *address)
{
	char num[32];
	sbuf b = {0};
	sb_str(&b, "{\"clientId\":");
	sb_json_str(&b, c->client_id);
	snprintf(num, sizeof(num), "%lld", now_ms_epoch());
	sb_str(&b, ",\"timestamp\":");
	sb_str(&b, num);
	sb_str(&b, ",\"eventType\":\"connected\",\"sessionIdentifier\":");
	sb_json_str(&b, c->session_id);
	sb_str(&b, ",\"principalIdentifier\":");
	sb_json_str(&b, c->cert_id);
	sb_str(&b, ",\"ipAddress\":");
	sb_json_str(&b, address ? address : "");
	snprintf(num, sizeof(num), "%lld", c->version);
	sb_str(&b, ",\"versionNumber\":");
	sb_str(&b, num);
	sb_str(&b, "}");
	publish_event("connected", c->client_id, &b);
	free(b.p);
}

static void publish_disconnected(const conn_t *c, const char *reason)
{
	char num[32];
	sbuf b = {0};
	sb_str(&b, "{\"clientId\":");
	sb_json_str(&b, c->client_id);
	snprintf(num, sizeof(num), "%lld", now_ms_epoch());
	sb_str(&b, ",\"timestamp\":");
	sb_str(&b, num);
	sb_str(&b, ",\"eventType\":\"disconnected\",\"clientInitiatedDisconnect\":");
	sb_str(&b, reason == R_CLIENT_INITIATED ? "true" : "false");
	sb_str(&b, ",\"sessionIdentifier\":");
	sb_json_str(&b, c->session_id);
	sb_str(&b, ",\"principalIdentifier\":");
	sb_json_str(&b, c->cert_id);
	sb_str(&b, ",\"disconnectReason\":");
	sb_json_str(&b, reason);
	snprintf(num, sizeof(num), "%lld", c->version);
	sb_str(&b, ",\"versionNumber\":");
	sb_str(&b, num);
	sb_str(&b, "}");
	publish_event("disconnected", c->client_id, &b);
	free(b.p);
}

/*
 * mosquitto 2.0.11 passes no reason to MOSQ_EVT_DISCONNECT (always -1). It does log one line
 * ("Client <id> ...") in do_disconnect() immediately before calling the plugin, and the log file
 * is line-buffered and flushed, so the last line of the log names the reason.
 */
static const char *reason_from_log(const char *client_id)
{
	if(!g.log_path) return R_CONNECTION_LOST;
	int fd = open(g.log_path, O_RDONLY | O_CLOEXEC);
	if(fd < 0) return R_CONNECTION_LOST;
	struct stat st;
	const char *reason = R_CONNECTION_LOST;
	size_t idlen = strlen(client_id);
	size_t want = idlen + 512;
	char *buf = NULL;
	if(fstat(fd, &st) == 0 && st.st_size > 0){
		if((off_t)want > st.st_size) want = (size_t)st.st_size;
		buf = xmalloc(want + 1);
		ssize_t got = pread(fd, buf, want, st.st_size - (off_t)want);
		if(got > 0){
			buf[got] = '\0';
			size_t len = (size_t)got;
			while(len && (buf[len - 1] == '\n' || buf[len - 1] == '\r')) buf[--len] = '\0';
			char *line = strrchr(buf, '\n');
			line = line ? line + 1 : buf;
			/* skip the "<seconds>: " timestamp */
			char *p = line;
			while(*p >= '0' && *p <= '9') p++;
			if(p != line && p[0] == ':' && p[1] == ' ') line = p + 2;
			static const char bad_rw[] = "Bad socket read/write on client ";
			if(!strncmp(line, "Client ", 7) && !strncmp(line + 7, client_id, idlen)
					&& line[7 + idlen] == ' '){
				const char *rest = line + 7 + idlen + 1;
				if(!strcmp(rest, "disconnected.")) reason = R_CLIENT_INITIATED;
				else if(!strcmp(rest, "closed its connection.")) reason = R_CONNECTION_LOST;
				else if(!strcmp(rest, "has exceeded timeout, disconnecting.")) reason = R_KEEPALIVE;
				else if(!strcmp(rest, "disconnected, not authorised.")) reason = R_AUTH_ERROR;
				else if(!strcmp(rest, "disconnected due to out of memory.")) reason = R_SERVER_ERROR;
				else if(!strncmp(rest, "disconnected due to ", 20)) reason = R_CLIENT_ERROR;
				else if(!strcmp(rest, "been disconnected by administrative action.")) reason = R_SERVER_INITIATED;
				else reason = R_CONNECTION_LOST;
			}else if(!strncmp(line, bad_rw, sizeof(bad_rw) - 1)
					&& !strncmp(line + sizeof(bad_rw) - 1, client_id, idlen)
					&& !strncmp(line + sizeof(bad_rw) - 1 + idlen, ": ", 2)){
				/* mosquitto_strerror() of the error that ended the connection */
				static const char *const client_errors[] = {
					"Requested QoS not supported on server.", "Malformed UTF-8",
					"Duplicate property in property list", "Invalid function arguments provided.",
					"Payload too large.", "Packet larger than supported by the server.",
					"This feature is not supported.",
				};
				const char *rest = line + sizeof(bad_rw) - 1 + idlen + 2;
				for(size_t i = 0; i < sizeof(client_errors) / sizeof(client_errors[0]); i++){
					if(!strcmp(rest, client_errors[i])) reason = R_CLIENT_ERROR;
				}
			}
		}
	}
	free(buf);
	close(fd);
	return reason;
}

/* ------------------------------------------------------------------------------------------ */
/* certificate helpers                                                                         */

static bool cert_identity(X509 *cert, char out_id[CERT_ID_LEN + 1], char **out_cn)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;
	static const char hex[] = "0123456789abcdef";
	*out_cn = NULL;
	if(X509_digest(cert, EVP_sha256(), md, &n) != 1 || n != 32) return false;
	for(unsigned int i = 0; i < n; i++){
		out_id[2 * i] = hex[md[i] >> 4];
		out_id[2 * i + 1] = hex[md[i] & 0xF];
	}
	out_id[CERT_ID_LEN] = '\0';
	X509_NAME *name = X509_get_subject_name(cert);
	int idx = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
	if(idx >= 0){
		X509_NAME_ENTRY *entry = X509_NAME_get_entry(name, idx);
		ASN1_STRING *data = entry ? X509_NAME_ENTRY_get_data(entry) : NULL;
		unsigned char *utf8 = NULL;
		int len = data ? ASN1_STRING_to_UTF8(&utf8, data) : -1;
		if(len >= 0 && utf8){
			if(strlen((char *)utf8) == (size_t)len) *out_cn = xstrdup((char *)utf8);
			OPENSSL_free(utf8);
		}
	}
	return true;
}

static const char *cn_of(const char *cert_id)
{
	return cert_id ? hmap_get(&g.cns, cert_id, strlen(cert_id)) : NULL;
}

static bool has_wildcard_chars(const char *s)
{
	return strpbrk(s, "#+") != NULL;
}

/* ------------------------------------------------------------------------------------------ */
/* subscriptions of a session, one copy per connection, retained messages                     */

/*
 * mosquitto 2.0.11 tells a plugin neither which subscription a receive check is for nor the
 * subscriptions of a client, so the plugin keeps them itself (per client id, from the
 * subscribe / unsubscribe checks) and recognises the message being routed (route_t).
 */

static client_rec *rec_of(const char *client_id)
{
	return client_id ? hmap_get(&g.clients, client_id, strlen(client_id)) : NULL;
}

static bool ends_in_parent_hash(const char *filter)
{
	size_t n = strlen(filter);
	return n >= 2 && filter[n - 2] == '/' && filter[n - 1] == '#';
}

/*
 * The first ACL check of a new connection runs after mosquitto took over (or discarded) the
 * previous session of its client id, so the context's subscription slots tell which: none means
 * a session without subscriptions (clean start, expired, new). Otherwise the session was resumed
 * and the filters remembered for the client id still apply; when the plugin does not know them
 * (plugin started after the session was made, record pruned) subs_known stays false.
 */
static void subs_sync(conn_t *c)
{
	c->subs_synced = true;
	client_rec *cr = rec_of(c->client_id);
	if(!cr) return;
	if(mosquitto_client_sub_count(c->ctx) == 0){
		hmap_empty(&cr->filters);
		cr->parent_hash_filters = 0;
		cr->subs_known = true;
	}
}

static bool subs_has(client_rec *cr, const char *filter)
{
	return hmap_find(&cr->filters, filter, strlen(filter)) != NULL;
}

static void subs_add(client_rec *cr, const char *filter)
{
	if(subs_has(cr, filter)) return;
	hmap_put(&cr->filters, filter, strlen(filter), (void *)1);
	if(ends_in_parent_hash(filter)) cr->parent_hash_filters++;
}

static void subs_forget(const char *client_id, const char *filter)
{
	client_rec *cr = rec_of(client_id);
	if(!cr || !hmap_del(&cr->filters, filter, strlen(filter))) return;
	if(ends_in_parent_hash(filter)) cr->parent_hash_filters--;
}

/*
 * IoT Core's matching: MQTT's, except that `a/#` does not match `a` (§5.3). A filter starting
 * with a wildcard does not match a `$` topic; `$share/<name>/` is not part of the filter.
 */
static bool iot_filter_matches(const char *f, const char *t)
{
	if(!strncmp(f, "$share/", 7)){
		const char *slash = strchr(f + 7, '/');
		if(!slash) return false;
		f = slash + 1;
	}
	if(t[0] == '$' && (f[0] == '+' || f[0] == '#')) return false;
	bool t_done = false; /* every topic level was consumed */
	for(;;){
		const char *fe = strchr(f, '/');
		if(!fe) fe = f + strlen(f);
		if(fe - f == 1 && f[0] == '#') return !t_done; /* `#` needs a level, even empty */
		if(t_done) return false;
		const char *te = strchr(t, '/');
		if(!te) te = t + strlen(t);
		if(!(fe - f == 1 && f[0] == '+')){
			if(fe - f != te - t || memcmp(f, t, (size_t)(fe - f))) return false;
		}
		if(!*fe) return !*te;
		f = fe + 1;
		if(*te) t = te + 1;
		else t_done = true;
	}
}

/* False when the only subscriptions that made mosquitto route `topic` here are `x/#` filters
 * matching their parent level `x`. */
static bool subs_deliverable(const char *client_id, const char *topic)
{
	client_rec *cr = rec_of(client_id);
	if(!cr || !cr->subs_known || !cr->parent_hash_filters) return true;
	for(size_t i = 0; i < cr->filters.nb; i++){
		for(hent *e = cr->filters.b[i]; e; e = e->next){
			if(iot_filter_matches(e->key, topic)) return true;
		}
	}
	return false;
}

/* A subscribe check the policy allowed: count the filter, at most MAX_SUBSCRIPTIONS per
 * session for devices (a filter already subscribed does not count twice). */
static bool subs_admit(const char *client_id, const char *filter, bool exempt)
{
	client_rec *cr = rec_of(client_id);
	if(!cr) return true;
	if(!subs_has(cr, filter)){
		if(!exempt && cr->filters.n >= MAX_SUBSCRIPTIONS) return false;
		subs_add(cr, filter);
	}
	return true;
}

static void psub_clear(void)
{
	free(g.psub.filter);
	g.psub.filter = NULL;
	g.psub.client = NULL;
}

static void psub_set(struct mosquitto *client, const char *filter)
{
	psub_clear();
	g.psub.client = client;
	g.psub.filter = xstrdup(filter);
}

static uint64_t payload_sample(const void *payload, uint32_t len)
{
	const unsigned char *b = payload ? payload : (const unsigned char *)"";
	if(len <= 512) return hash_bytes(b, len);
	return (hash_bytes(b, 256) * 31) ^ hash_bytes(b + len - 256, 256) ^ len;
}

static void route_clear(void)
{
	free(g.route.topic);
	g.route.topic = NULL;
	g.route.active = false;
	hmap_empty(&g.route.seen);
}

/* Called by every callback but the receive checks: whatever is routed next is a new message. */
static void routing_clear(void)
{
	route_clear();
	psub_clear();
}

static bool route_is(const struct mosquitto_evt_acl_check *ed)
{
	const route_t *r = &g.route;
	return r->active && r->payload == ed->payload && r->payloadlen == ed->payloadlen
		&& r->qos == ed->qos && r->retain == ed->retain && !strcmp(r->topic, ed->topic)
		&& r->sample == payload_sample(ed->payload, ed->payloadlen);
}

/*
 * A receive check the policy allowed. Retained messages sent for a new subscription go only to
 * a filter equal to their topic (§5.5); any other delivery needs a subscription that matches
 * the IoT Core way, and a connection gets one copy of a message however many of its
 * subscriptions match (§7.2). Offline sessions (queued messages) count like connections.
 */
static bool receive_once(const struct mosquitto_evt_acl_check *ed, const char *client_id)
{
	struct mosquitto *client = ed->client;
	if(g.psub.client == client){
		if(ed->retain){
			return strncmp(g.psub.filter, "$share/", 7) && !strcmp(g.psub.filter, ed->topic);
		}
		psub_clear(); /* not a stored retained message: not the subscription's */
	}
	if(!subs_deliverable(client_id, ed->topic)) return false;
	if(!route_is(ed)){
		route_clear();
		g.route.active = true;
		g.route.payload = ed->payload;
		g.route.payloadlen = ed->payloadlen;
		g.route.sample = payload_sample(ed->payload, ed->payloadlen);
		g.route.qos = ed->qos;
		g.route.retain = ed->retain;
		g.route.topic = xstrdup(ed->topic);
	}
	if(hmap_find(&g.route.seen, &client, sizeof(client))) return false;
	hmap_put(&g.route.seen, &client, sizeof(client), (void *)1);
	return true;
}

/* ------------------------------------------------------------------------------------------ */
/* callbacks                                                                                   */

static int refuse(struct mosquitto *client, const char *client_id, const char *cert_id,
		const char *why)
{
	mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotcore: refused CONNECT of client %s from %s "
			"(certificate %.12s...): %s", client_id ? client_id : "<none>",
			mosquitto_client_address(client) ? mosquitto_client_address(client) : "?",
			cert_id ? cert_id : "-", why);
	if(mosquitto_client_protocol_version(client) != 5 && g.v311_connect_hangup){
		/* mosquitto closes the connection without a CONNACK for errors other than AUTH */
		return MOSQ_ERR_UNKNOWN;
	}
	return MOSQ_ERR_AUTH;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_basic_auth *ed = event_data;
	struct mosquitto *client = ed->client;
	(void)event;
	(void)userdata;

	routing_clear();
	const char *client_id = mosquitto_client_id(client);
	conn_t *existing = conn_get(client);
	if(existing){
		const char *username = mosquitto_client_username(client);
		if(!username || strcmp(username, existing->cert_id)){
			/* not a re-check: a stale entry for a reused context (should not happen) */
			conn_remove(client);
			existing = NULL;
		}
	}
	if(existing){
		/* Re-check of a connected client (mosquitto does this on SIGHUP). */
		const reg_row *row = registry_lookup(existing->cert_id);
		if(!cert_usable(row)){
			existing->reason = R_AUTH_ERROR;
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotcore: disconnecting client %s: certificate %.12s... is no longer ACTIVE",
					existing->client_id, existing->cert_id);
			return MOSQ_ERR_AUTH;
		}
		return MOSQ_ERR_SUCCESS;
	}

	/* Two stat() calls per CONNECT (next to a TLS handshake) keep the decision exact right
	 * after the registry was rewritten, without waiting for the next tick. */
	check_files(false);

	X509 *cert = mosquitto_client_certificate(client);
	if(!cert){
		const char *username = mosquitto_client_username(client);
		if(username && client_id && registry_lookup(username)){
			/* Re-check of an offline persistent session on SIGHUP (no socket, no TLS). Refusing
			 * it would make mosquitto 2.0.11 disconnect an already disconnected context; the ACL
			 * checks deny it anyway if the certificate is no longer ACTIVE. */
			return MOSQ_ERR_SUCCESS;
		}
		return refuse(client, client_id, NULL, "no client certificate");
	}
	char cert_id[CERT_ID_LEN + 1];
	char *cn = NULL;
	bool ok = cert_identity(cert, cert_id, &cn);
	X509_free(cert);
	if(!ok){
		free(cn);
		return refuse(client, client_id, NULL, "cannot hash the client certificate");
	}
	if(!client_id){
		free(cn);
		return refuse(client, client_id, cert_id, "no client id");
	}
	if(strlen(client_id) > MAX_CLIENT_ID){
		free(cn);
		return refuse(client, client_id, cert_id, "client id longer than 128 bytes");
	}
	const reg_row *row = registry_lookup(cert_id);
	if(!row){
		free(cn);
		return refuse(client, client_id, cert_id, "certificate not registered");
	}
	if(row->status != ST_ACTIVE){
		free(cn);
		return refuse(client, client_id, cert_id, "certificate is not ACTIVE");
	}
	principal pr = {row->role, row->thing, client_id, cn};
	if(!policy_allows(&pr, ACT_CONNECT, client_id)){
		free(cn);
		return refuse(client, client_id, cert_id, "policy does not allow connect for this client id");
	}
	if(mosquitto_set_username(client, cert_id) != MOSQ_ERR_SUCCESS){
		free(cn);
		return refuse(client, client_id, cert_id, "cannot set username");
	}
	/* ed->username pointed at the old username, freed by mosquitto_set_username: don't use it. */
	ed->username = NULL;

	if(cn){
		char *old = hmap_put(&g.cns, cert_id, strlen(cert_id), cn);
		free(old);
	}

	client_rec *cr = hmap_get(&g.clients, client_id, strlen(client_id));
	if(!cr){
		cr = xmalloc(sizeof(*cr));
		memset(cr, 0, sizeof(*cr));
		hmap_put(&g.clients, client_id, strlen(client_id), cr);
	}
	if(cr->current && cr->current != client){
		conn_t *old = conn_get(cr->current);
		/* mosquitto disconnects the old connection right after this callback returns */
		if(old && !old->reason) old->reason = R_DUPLICATE;
	}
	conn_t *c = xmalloc(sizeof(*c));
	memset(c, 0, sizeof(*c));
	c->ctx = client;
	c->client_id = xstrdup(client_id);
	memcpy(c->cert_id, cert_id, sizeof(c->cert_id));
	random_hex(c->session_id, 16);
	c->version = cr->next_version++;
	c->presence = g.presence && !has_wildcard_chars(client_id);
	conn_free(hmap_put(&g.conns, &client, sizeof(client), c));
	cr->current = client;

	if(c->presence) publish_connected(c, mosquitto_client_address(client));
	return MOSQ_ERR_SUCCESS;
}

/* Topic / filter size rules of IoT Core (256 bytes, at most 7 slashes after a prefix). */
static bool topic_within_limits(const char *topic, bool is_filter)
{
	if(strlen(topic) > MAX_TOPIC_BYTES) return false;
	/* AWS's own reserved topics are not subject to the 8-level limit: the Commands reply
	 * topics ($aws/commands/things/T/executions/ID/response/accepted/json) have 9 levels. */
	if(!strncmp(topic, "$aws/", 5) && strncmp(topic, "$aws/rules/", 11)) return true;
	const char *p = topic;
	if(!is_filter && !strncmp(p, "$aws/rules/", 11)){
		const char *slash = strchr(p + 11, '/');
		p = slash ? slash + 1 : p + strlen(p);
	}else if(is_filter && !strncmp(p, "$share/", 7)){
		const char *slash = strchr(p + 7, '/');
		p = slash ? slash + 1 : p + strlen(p);
	}
	int slashes = 0;
	for(; *p; p++){
		if(*p == '/') slashes++;
	}
	return slashes <= MAX_TOPIC_SLASHES;
}

/* ------------------------------------------------------------------------------------------ */
/* requester identity and addressed responses                                                  */

static bool is_service(const reg_row *row)
{
	return row && !strcmp(row->role, ROLE_SERVICE);
}

static bool is_reserved_key(const char *name)
{
	return !strcmp(name, PROP_CLIENT_ID) || !strcmp(name, PROP_DELIVER_TO);
}

/* Reads the user property at p (a node of a list). The strings are calloc()ed copies (free()
 * them; 2.0.11 uses plain calloc there) and never NULL on success. */
static bool read_user_property(const mosquitto_property *p, char **name, char **value)
{
	*name = *value = NULL;
	if(mosquitto_property_identifier(p) != MQTT_PROP_USER_PROPERTY) return false;
	if(!mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, name, value, false)){
		free(*name);
		free(*value);
		*name = *value = NULL;
		return false;
	}
	if(!*name) *name = xstrdup("");
	if(!*value) *value = xstrdup("");
	return true;
}

/* Looks for user properties named `key` (first value into *first_value when not NULL) and for
 * any reserved user property. */
static bool props_find(const mosquitto_property *list, const char *key, char **first_value,
		bool *any_reserved)
{
	bool found = false;
	if(first_value) *first_value = NULL;
	if(any_reserved) *any_reserved = false;
	for(const mosquitto_property *p = list; p; p = mosquitto_property_next(p)){
		char *name, *value;
		if(!read_user_property(p, &name, &value)) continue;
		if(any_reserved && is_reserved_key(name)) *any_reserved = true;
		if(key && !strcmp(name, key)){
			if(!found && first_value){
				*first_value = value;
				value = NULL;
			}
			found = true;
		}
		free(name);
		free(value);
	}
	return found;
}

/* Appends a copy of property p to *dst (the value types a PUBLISH can carry). */
static int prop_copy(mosquitto_property **dst, const mosquitto_property *p)
{
	int id = mosquitto_property_identifier(p);
	int rc = MOSQ_ERR_NOT_SUPPORTED;
	switch(id){
		case MQTT_PROP_PAYLOAD_FORMAT_INDICATOR: {
			uint8_t v;
			if(mosquitto_property_read_byte(p, id, &v, false)) rc = mosquitto_property_add_byte(dst, id, v);
			break;
		}
		case MQTT_PROP_TOPIC_ALIAS: {
			uint16_t v;
			if(mosquitto_property_read_int16(p, id, &v, false)) rc = mosquitto_property_add_int16(dst, id, v);
			break;
		}
		case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL: {
			uint32_t v;
			if(mosquitto_property_read_int32(p, id, &v, false)) rc = mosquitto_property_add_int32(dst, id, v);
			break;
		}
		case MQTT_PROP_SUBSCRIPTION_IDENTIFIER: {
			uint32_t v;
			if(mosquitto_property_read_varint(p, id, &v, false)) rc = mosquitto_property_add_varint(dst, id, v);
			break;
		}
		case MQTT_PROP_CONTENT_TYPE:
		case MQTT_PROP_RESPONSE_TOPIC: {
			char *v = NULL;
			if(mosquitto_property_read_string(p, id, &v, false)){
				rc = mosquitto_property_add_string(dst, id, v ? v : "");
			}
			free(v);
			break;
		}
		case MQTT_PROP_CORRELATION_DATA: {
			void *v = NULL;
			uint16_t len = 0;
			if(mosquitto_property_read_binary(p, id, &v, &len, false)){
				rc = mosquitto_property_add_binary(dst, id, v, len);
			}
			free(v);
			break;
		}
		case MQTT_PROP_USER_PROPERTY: {
			char *name, *value;
			if(read_user_property(p, &name, &value)){
				rc = mosquitto_property_add_string_pair(dst, id, name, value);
				free(name);
				free(value);
			}
			break;
		}
		default:
			break;
	}
	return rc;
}

/*
 * Removes user properties: every reserved one (all_reserved) or only those named `key`.
 * libmosquitto 2.0.11 has no call to unlink one property, so the list is rebuilt in order and
 * the old one freed; the message store takes whatever list the event holds afterwards.
 */
static void props_strip(mosquitto_property **list, const char *key, bool all_reserved)
{
	mosquitto_property *out = NULL;
	for(const mosquitto_property *p = *list; p; p = mosquitto_property_next(p)){
		char *name, *value;
		if(read_user_property(p, &name, &value)){
			bool drop = all_reserved ? is_reserved_key(name) : !strcmp(name, key);
			free(name);
			free(value);
			if(drop) continue;
		}
		int rc = prop_copy(&out, p);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"iotcore: could not copy MQTT property %d of a PUBLISH (%d): dropped it",
					mosquitto_property_identifier(p), rc);
		}
	}
	mosquitto_property_free_all(list);
	*list = out;
}

static void target_clear(void)
{
	free(g.target.topic);
	free(g.target.deliver_to);
	memset(&g.target, 0, sizeof(g.target));
}

/* Remember an addressed message of the service for the receive checks that route it. */
static void target_set(struct mosquitto_evt_message *ed, char *deliver_to)
{
	if(!ed->payload){
		/* An empty payload has no buffer: give it one so the pointer identifies it. */
		char *buf = mosquitto_malloc(1);
		if(buf){
			buf[0] = '\0';
			ed->payload = buf;
			ed->payloadlen = 0;
		}
	}
	if(ed->retain){
		/* A retained copy would reach later subscribers without this check. */
		mosquitto_log_printf(MOSQ_LOG_INFO,
				"iotcore: %s for client %s is addressed: not retained", ed->topic, deliver_to);
		ed->retain = false;
	}
	g.target.active = true;
	g.target.payload = ed->payload;
	g.target.payloadlen = ed->payloadlen;
	g.target.hash = hash_bytes(ed->payload ? ed->payload : "", ed->payloadlen);
	g.target.topic = xstrdup(ed->topic);
	g.target.deliver_to = deliver_to;
}

/* True when the message a receive check is about was addressed to another client. */
static bool target_excludes(const struct mosquitto_evt_acl_check *ed, const reg_row *row,
		const char *client_id)
{
	const target_t *t = &g.target;
	if(!t->active || ed->payload != t->payload || ed->payloadlen != t->payloadlen) return false;
	if(!ed->topic || strcmp(ed->topic, t->topic)) return false;
	if(hash_bytes(ed->payload ? ed->payload : "", ed->payloadlen) != t->hash) return false;
	if(is_service(row)) return false;
	return strcmp(client_id, t->deliver_to) != 0;
}

/*
 * MOSQ_EVT_MESSAGE: every PUBLISH from a client, after the publish ACL check and before it is
 * stored and routed (mosquitto 2.0.11 routes QoS 0/1 synchronously right after this callback,
 * running MOSQ_EVT_ACL_CHECK/READ once per matching subscription; QoS 2 is refused earlier by
 * max_qos 1). ed->properties is the stored message's list (NULL for MQTT 3.1.1): mosquitto
 * stores whatever list the event holds afterwards and frees it with the message.
 */
static int on_message(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_message *ed = event_data;
	(void)event;
	(void)userdata;

	target_clear();
	routing_clear();
	const reg_row *row = registry_lookup(mosquitto_client_username(ed->client));
	const char *client_id = mosquitto_client_id(ed->client);

	if(is_service(row)){
		char *deliver_to = NULL;
		if(props_find(ed->properties, PROP_DELIVER_TO, &deliver_to, NULL)){
			/* IoT Core sends the response without it */
			props_strip(&ed->properties, PROP_DELIVER_TO, false);
			target_set(ed, deliver_to);
		}
		return MOSQ_ERR_SUCCESS;
	}

	bool reserved = false;
	props_find(ed->properties, NULL, NULL, &reserved);
	if(reserved){
		mosquitto_log_printf(MOSQ_LOG_INFO,
				"iotcore: removed reserved user properties (" PROP_CLIENT_ID ", " PROP_DELIVER_TO
				") from a PUBLISH of client %s to %s", client_id ? client_id : "?", ed->topic);
		props_strip(&ed->properties, NULL, true);
	}
	if(client_id && !strncmp(ed->topic, "$aws/", 5)){
		int rc = mosquitto_property_add_string_pair(&ed->properties, MQTT_PROP_USER_PROPERTY,
				PROP_CLIENT_ID, client_id);
		if(rc != MOSQ_ERR_SUCCESS){
			mosquitto_log_printf(MOSQ_LOG_WARNING,
					"iotcore: could not add " PROP_CLIENT_ID " to a PUBLISH of client %s (%d)",
					client_id, rc);
		}
	}
	return MOSQ_ERR_SUCCESS;
}

static int acl_decide(struct mosquitto_evt_acl_check *ed)
{
	struct mosquitto *client = ed->client;
	enum action action;
	switch(ed->access){
		case MOSQ_ACL_WRITE: action = ACT_PUBLISH; break;
		case MOSQ_ACL_READ: action = ACT_RECEIVE; break;
		case MOSQ_ACL_SUBSCRIBE: action = ACT_SUBSCRIBE; break;
		case MOSQ_ACL_UNSUBSCRIBE: {
			conn_t *c = conn_get(client);
			if(c && !c->subs_synced) subs_sync(c);
			subs_forget(mosquitto_client_id(client), ed->topic);
			return MOSQ_ERR_SUCCESS;
		}
		default: return MOSQ_ERR_ACL_DENIED;
	}
	const char *cert_id = mosquitto_client_username(client);
	const char *client_id = mosquitto_client_id(client);
	const reg_row *row = registry_lookup(cert_id);
	conn_t *live = conn_get(client); /* NULL for offline sessions, wills after disconnect */
	if(live && !live->subs_synced) subs_sync(live);

	if(!cert_usable(row) || !client_id){
		if(live){
			if(!live->reason) live->reason = R_AUTH_ERROR;
			queue_kick(live, R_AUTH_ERROR);
			if(action != ACT_RECEIVE) return MOSQ_ERR_AUTH; /* closes the connection now */
		}
		return MOSQ_ERR_ACL_DENIED;
	}

	if(action == ACT_PUBLISH && live && g.max_payload > 0 && (long)ed->payloadlen > g.max_payload){
		live->reason = R_CLIENT_ERROR;
		mosquitto_log_printf(MOSQ_LOG_NOTICE,
				"iotcore: client %s published %u bytes to %s (limit %ld): disconnecting",
				client_id, ed->payloadlen, ed->topic, g.max_payload);
		return MOSQ_ERR_PAYLOAD_SIZE;
	}

	if(action == ACT_RECEIVE && target_excludes(ed, row, client_id)) return MOSQ_ERR_ACL_DENIED;

	bool allowed = false;
	if(action == ACT_RECEIVE || topic_within_limits(ed->topic, action == ACT_SUBSCRIBE)){
		principal pr = {row->role, row->thing, client_id, cn_of(cert_id)};
		allowed = policy_allows(&pr, action, ed->topic);
	}
	if(action == ACT_RECEIVE){
		return allowed && receive_once(ed, client_id) ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
	}
	if(allowed && action == ACT_SUBSCRIBE){
		if(!subs_admit(client_id, ed->topic, is_service(row))){
			/* IoT Core: SUBACK failure (the connection may be closed too) */
			mosquitto_log_printf(MOSQ_LOG_NOTICE,
					"iotcore: denied subscribe of %s by client %s: it has %d subscriptions already",
					ed->topic, client_id, MAX_SUBSCRIPTIONS);
			return MOSQ_ERR_ACL_DENIED;
		}
		if(!g.in_kick) psub_set(client, ed->topic);
	}
	if(allowed) return MOSQ_ERR_SUCCESS;

	mosquitto_log_printf(MOSQ_LOG_NOTICE, "iotcore: denied %s of %s by client %s",
			action == ACT_PUBLISH ? "publish" : "subscribe", ed->topic, client_id);
	if(live && mosquitto_client_protocol_version(client) != 5){
		if(action == ACT_PUBLISH || g.v311_subscribe_disconnect){
			/* IoT Core closes an MQTT 3.1.1 connection on an authorization failure */
			live->reason = R_AUTH_ERROR;
			return MOSQ_ERR_AUTH;
		}
	}
	return MOSQ_ERR_ACL_DENIED;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_acl_check *ed = event_data;
	(void)event;
	(void)userdata;

	if(ed->access != MOSQ_ACL_READ){
		routing_clear();
	}else if(g.psub.client && g.psub.client != ed->client){
		psub_clear(); /* retained messages of a new subscription go to its client only */
	}
	int rc = acl_decide(ed);
	if(ed->access == MOSQ_ACL_SUBSCRIBE && g.in_kick && rc != MOSQ_ERR_SUCCESS){
		/* a kicked persistent session loses the subscriptions that are no longer allowed */
		subs_forget(mosquitto_client_id(ed->client), ed->topic);
	}
	return rc;
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
	struct mosquitto_evt_disconnect *ed = event_data;
	struct mosquitto *client = ed->client;
	(void)event;
	(void)userdata;

	routing_clear();
	conn_t *c = conn_get(client);
	if(!c) return MOSQ_ERR_SUCCESS;
	/* infer first: anything we log would become the last line of the log */
	const char *reason = c->reason ? c->reason : reason_from_log(c->client_id);
	if(c->presence) publish_disconnected(c, reason);
	conn_remove(client);
	return MOSQ_ERR_SUCCESS;
}

static void prune_clients(long long now)
{
	for(size_t i = 0; i < g.clients.nb; i++){
		hent **pp = &g.clients.b[i];
		while(*pp){
			hent *e = *pp;
			client_rec *cr = e->val;
			if(!cr->current && now - cr->offline_since_ms > VERSION_RESET_MS){
				/* a persistent session outliving this loses its known subscriptions: the
				 * receive checks then allow what mosquitto matches (subs_deliverable) */
				*pp = e->next;
				client_rec_free(cr);
				free(e);
				g.clients.n--;
			}else{
				pp = &e->next;
			}
		}
	}
}

static int on_tick(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	/* a message is routed within the callback that saw it: nothing addressed is pending now */
	target_clear();
	routing_clear();
	long long now = now_ms_monotonic();
	if(now - g.last_check_ms >= g.check_interval_ms){
		g.last_check_ms = now;
		check_files(false);
	}
	if(now - g.last_prune_ms >= PRUNE_INTERVAL_MS){
		g.last_prune_ms = now;
		prune_clients(now);
	}
	run_kicks();
	routing_clear();
	return MOSQ_ERR_SUCCESS;
}

static int on_reload(int event, void *event_data, void *userdata)
{
	(void)event;
	(void)event_data;
	(void)userdata;
	routing_clear();
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotcore: reloading registry and policies");
	check_files(true);
	g.last_check_ms = now_ms_monotonic();
	/* the kicks run on the next tick; mosquitto also re-checks every client (BASIC_AUTH) */
	return MOSQ_ERR_SUCCESS;
}

/* ------------------------------------------------------------------------------------------ */
/* plugin entry points                                                                         */

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
	for(int i = 0; i < supported_version_count; i++){
		if(supported_versions[i] == 5) return 5;
	}
	return -1;
}

static bool parse_bool(const char *v, bool dflt)
{
	if(!v) return dflt;
	if(!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes")) return true;
	if(!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no")) return false;
	return dflt;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
		struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	memset(&g, 0, sizeof(g));
	g.id = identifier;
	g.presence = true;
	g.v311_connect_hangup = true;
	g.max_payload = 131072;
	g.check_interval_ms = 250;
	for(int i = 0; i < option_count; i++){
		const char *k = options[i].key, *v = options[i].value;
		if(!k || !v) continue;
		if(!strcmp(k, "registry")) g.registry_path = xstrdup(v);
		else if(!strcmp(k, "policies")) g.policies_path = xstrdup(v);
		else if(!strcmp(k, "log")) g.log_path = xstrdup(v);
		else if(!strcmp(k, "presence")) g.presence = parse_bool(v, true);
		else if(!strcmp(k, "v311_connect_deny")) g.v311_connect_hangup = strcmp(v, "connack") != 0;
		else if(!strcmp(k, "v311_subscribe_deny")) g.v311_subscribe_disconnect = !strcmp(v, "disconnect");
		else if(!strcmp(k, "max_payload")) g.max_payload = strtol(v, NULL, 10);
		else if(!strcmp(k, "check_interval_ms")) g.check_interval_ms = strtol(v, NULL, 10);
		else mosquitto_log_printf(MOSQ_LOG_WARNING, "iotcore: unknown option plugin_opt_%s", k);
	}
	if(!g.registry_path || !g.policies_path){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"iotcore: plugin_opt_registry and plugin_opt_policies are required");
		return MOSQ_ERR_INVAL;
	}
	if(g.check_interval_ms < 0) g.check_interval_ms = 0;
	check_files(true);
	g.last_check_ms = now_ms_monotonic();
	g.last_prune_ms = g.last_check_ms;

	int rc;
	if((rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, NULL))
			|| (rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, NULL))
			|| (rc = mosquitto_callback_register(identifier, MOSQ_EVT_MESSAGE, on_message, NULL, NULL))
			|| (rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, NULL))
			|| (rc = mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, NULL))
			|| (rc = mosquitto_callback_register(identifier, MOSQ_EVT_RELOAD, on_reload, NULL, NULL))){
		mosquitto_log_printf(MOSQ_LOG_ERR, "iotcore: cannot register callbacks (%d)", rc);
		return rc;
	}
	mosquitto_log_printf(MOSQ_LOG_INFO, "iotcore: plugin ready (presence %s)",
			g.presence ? "on" : "off");
	return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
	(void)userdata;
	(void)options;
	(void)option_count;
	if(g.id){
		mosquitto_callback_unregister(g.id, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
		mosquitto_callback_unregister(g.id, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
		mosquitto_callback_unregister(g.id, MOSQ_EVT_MESSAGE, on_message, NULL);
		mosquitto_callback_unregister(g.id, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
		mosquitto_callback_unregister(g.id, MOSQ_EVT_TICK, on_tick, NULL);
		mosquitto_callback_unregister(g.id, MOSQ_EVT_RELOAD, on_reload, NULL);
	}
	hmap_clear(&g.conns, conn_free);
	hmap_clear(&g.clients, client_rec_free);
	hmap_clear(&g.cns, free);
	for(size_t i = 0; i < g.nkicks; i++) free(g.kicks[i].client_id);
	free(g.kicks);
	registry_free(&g.reg);
	policy_free(&g.pol);
	free(g.exp_chars.p);
	free(g.exp_wild.p);
	target_clear();
	routing_clear();
	hmap_clear(&g.route.seen, NULL);
	free(g.registry_path);
	free(g.policies_path);
	free(g.log_path);
	memset(&g, 0, sizeof(g));
	return MOSQ_ERR_SUCCESS;
}
