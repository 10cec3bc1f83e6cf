// WsrouterClient — a wsrouter client for Unity (2021+) and Mono/.NET: raw or
// wsrouter.v1 (docs/PROTOCOL.md), with reconnect, recovery and token refresh.
//
// Only the .NET Standard 2.0 base library: System.Net.WebSockets.
// ClientWebSocket, tasks, SynchronizationContext. JSON through WsrouterJson.
//
// Threading. The socket runs on a background task. Every event is raised
// through the SynchronizationContext that was current when the client was
// constructed (in Unity: construct it on the main thread, e.g. in Start(),
// and every handler runs on the main thread); with none, on the background
// task. Send() and Close() may be called from any thread.
//
// Behaviour, as clients/js/wsrouter.js:
// - reconnects with exponential backoff and jitter: attempt n (0-based,
//   counted since the last good connection) waits
//   min(MaxDelay, BaseDelay * 2^n) * (1 - Jitter * random); after
//   MaxAttempts failed attempts in a row it stops (Closed, a fatal Error);
// - v1: keeps per topic the (epoch, offset) of the last publication it
//   delivered (the welcome's position for topics it saw nothing on) and
//   offers them in hello.recover; welcome recovered:false raises Resync:
//   reload that topic's state from your backend;
// - v1: drops publications it already delivered (same epoch, offset not
//   above the last one);
// - tokens: GetToken(reason) is called with "refresh" RefreshBefore ahead
//   of the welcome's expires (sent as a v1 refresh, and used for later
//   connections), "expired" after a close 1008 "token expired", "rejected"
//   once after another 1008 authentication close, "initial" when there is
//   no token. A token from GetToken that is refused again, or a refused
//   token without GetToken, stops the client: Error with the close code,
//   Fatal = true, State Closed. A bad token never loops.

using System;
using System.Collections.Generic;
using System.IO;
using System.Net.WebSockets;
using System.Text;
using System.Threading;
using System.Threading.Tasks;

namespace Wsrouter
{
    public enum WsrouterProtocol { V1, Raw }

    public enum WsrouterState { Idle, Connecting, Recovering, Connected, Disconnected, Closed }

    //  A topic's position in its history
    public struct WsrouterPosition
    {
        public string Epoch;
        public long Offset;

        public WsrouterPosition(string epoch, long offset)
        {
            Epoch = epoch;
            Offset = offset;
        }
    }

    public sealed class WsrouterOptions
    {
        public WsrouterProtocol Protocol = WsrouterProtocol.V1;
        public string Token;                        //  for the first connection
        //  Asked for a new token; the argument is the reason ("initial",
        //  "refresh", "expired", "rejected"). Called on the background task.
        public Func<string, Task<string>> GetToken;
        public TimeSpan BaseDelay = TimeSpan.FromMilliseconds(250);
        public TimeSpan MaxDelay = TimeSpan.FromSeconds(30);
        public double Jitter = 0.5;                 //  0..1: part of each delay that is random
        public int MaxAttempts = int.MaxValue;      //  failed attempts in a row before giving up
        public TimeSpan RefreshBefore = TimeSpan.FromSeconds(60);
        public TimeSpan MinRefreshInterval = TimeSpan.FromSeconds(10);
        public TimeSpan OpenTimeout = TimeSpan.FromSeconds(15);     //  to the welcome (v1) / open
        public TimeSpan StableAfter = TimeSpan.FromSeconds(1);      //  raw: open this long = good
        public IDictionary<string, WsrouterPosition> Positions;     //  to recover from at first
        public int ReceiveBufferSize = 16384;
    }

    public sealed class WsrouterMessage
    {
        public string Topic;        //  null in raw mode
        public string Text;         //  the payload as text, or null when binary
        public byte[] Bytes;        //  the payload when binary, else null
        public bool IsBinary;
        public long? Offset;        //  null without history (raw mode, plain PUBLISH)
        public string Epoch;
    }

    public sealed class WsrouterError
    {
        public string Message;
        public int? CloseCode;      //  when a close caused it
        public string CloseReason;
        public bool Fatal;          //  the client stopped
        public override string ToString()
        {
            return Message + (CloseCode.HasValue ? " (close " + CloseCode + " " + CloseReason + ")" : "");
        }
    }

    public sealed class WsrouterTopicState
    {
        public string Epoch;
        public long Offset;
        public bool? Recovered;     //  null when the client did not ask
    }

    public sealed class WsrouterWelcome
    {
        public string Session;
        public string Node;
        public long? Expires;
        public Dictionary<string, WsrouterTopicState> Topics = new Dictionary<string, WsrouterTopicState>();
    }

    public sealed class WsrouterResync
    {
        public string Topic;
        public string Epoch;
        public long Offset;
    }

    public sealed class WsrouterClose
    {
        public int Code;            //  1006 when the connection was lost without a close frame
        public string Reason;
        public TimeSpan? ReconnectIn;   //  null when the client stops
    }

    public sealed class WsrouterClient : IDisposable
    {
        const string V1 = "wsrouter.v1";
        static readonly string[] Transient1008 = { "hello expected", "rate limit exceeded", "slow consumer" };

        public event Action<WsrouterMessage> Message;
        public event Action<WsrouterState> StateChanged;
        public event Action<WsrouterError> Error;
        public event Action<WsrouterWelcome> Welcome;
        public event Action<WsrouterResync> Resync;
        public event Action<WsrouterMessage> Reply;     //  the HTTP backend's answer to a send (v1)
        public event Action<long?> Refreshed;
        public event Action<WsrouterClose> Closed;

        readonly Uri url;
        readonly WsrouterOptions options;
        readonly SynchronizationContext context;
        readonly object gate = new object();
        readonly Dictionary<string, Pos> positions = new Dictionary<string, Pos>();
        readonly SemaphoreSlim sendLock = new SemaphoreSlim(1, 1);
        readonly CancellationTokenSource stop = new CancellationTokenSource();
        readonly Random random = new Random();

        string token;
        bool tokenUnproven;         //  from GetToken, not yet taken by a good connection
        volatile WsrouterState state = WsrouterState.Idle;
        ClientWebSocket socket;
        DateTime lastRefresh = DateTime.MinValue;
        Task loop;

        public WsrouterState State { get { return state; } }
        public string Session { get; private set; }
        public string Node { get; private set; }
        public long? Expires { get; private set; }
        public int Connections { get; private set; }    //  sockets opened, in all
        public int Attempts { get; private set; }       //  failed in a row
        public long Duplicates { get; private set; }    //  publications dropped as already delivered

        sealed class Pos
        {
            public string Epoch;
            public long? Offset;    //  null: nothing delivered since the welcome
            public long Base;       //  the welcome's offset
        }

        public WsrouterClient(string url, WsrouterOptions options)
        {
            this.url = new Uri(url);
            if (this.url.Scheme != "ws" && this.url.Scheme != "wss")
                throw new ArgumentException("url must be ws://... or wss://...");
            this.options = options ?? new WsrouterOptions();
            context = SynchronizationContext.Current;
            token = this.options.Token;
            if (this.options.Positions != null)
                foreach (var kv in this.options.Positions)
                    positions[kv.Key] = new Pos { Epoch = kv.Value.Epoch ?? "", Offset = kv.Value.Offset,
                                                  Base = kv.Value.Offset };
        }

        //  What the next hello offers: save it to recover across restarts.
        public Dictionary<string, WsrouterPosition> Positions
        {
            get {
                lock (gate) {
                    var copy = new Dictionary<string, WsrouterPosition>();
                    foreach (var kv in positions)
                        copy[kv.Key] = new WsrouterPosition(kv.Value.Epoch, kv.Value.Offset ?? kv.Value.Base);
                    return copy;
                }
            }
        }

        public void Connect()
        {
            lock (gate) {
                if (state == WsrouterState.Closed)
                    throw new InvalidOperationException("WsrouterClient: closed; make a new one");
                if (loop != null)
                    return;
                loop = Task.Run(() => RunAsync(stop.Token));
            }
        }

        public void Close()
        {
            if (state == WsrouterState.Closed)
                return;
            stop.Cancel();
            var ws = socket;
            if (ws != null) {
                try {
                    ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None);
                }
                catch (Exception) {
                    //  closing already
                }
            }
            SetState(WsrouterState.Closed);
        }

        public void Dispose()
        {
            Close();
        }

        // ---- events, on the caller's context

        void Raise<T>(Action<T> handler, T arg)
        {
            if (handler == null)
                return;
            if (context != null)
                context.Post(_ => handler(arg), null);
            else {
                try {
                    handler(arg);
                }
                catch (Exception) {
                    //  a handler's failure must not stop the client
                }
            }
        }

        void SetState(WsrouterState next)
        {
            lock (gate) {
                if (state == next || state == WsrouterState.Closed)
                    return;
                state = next;
            }
            Raise(StateChanged, next);
        }

        void RaiseError(string message, int? code = null, string reason = null, bool fatal = false)
        {
            Raise(Error, new WsrouterError { Message = message, CloseCode = code, CloseReason = reason,
                                            Fatal = fatal });
        }

        void Fatal(string message, int? code = null, string reason = null)
        {
            RaiseError(message, code, reason, true);
            stop.Cancel();
            SetState(WsrouterState.Closed);
        }

        // ---- the connection loop

        async Task RunAsync(CancellationToken ct)
        {
            string tokenReason = token == null && options.GetToken != null ? "initial" : null;
            while (!ct.IsCancellationRequested) {
                if (tokenReason != null) {
                    string fresh = await FetchTokenAsync(tokenReason).ConfigureAwait(false);
                    if (ct.IsCancellationRequested)
                        return;
                    if (fresh == null) {
                        //  Asked again after the backoff, for the same reason
                        Attempts++;
                        if (!await BackoffAsync(1006, "no token", ct).ConfigureAwait(false))
                            return;
                        continue;
                    }
                    tokenReason = null;
                }
                bool hasPositions;
                lock (gate)
                    hasPositions = positions.Count > 0;
                SetState(options.Protocol == WsrouterProtocol.V1 && hasPositions
                         ? WsrouterState.Recovering : WsrouterState.Connecting);
                var outcome = await ConnectionAsync(ct).ConfigureAwait(false);
                if (ct.IsCancellationRequested)
                    return;
                bool auth = outcome.Code == 1008 && !IsTransient(outcome.Reason);
                if (auth) {
                    if (options.GetToken == null || tokenUnproven) {
                        Raise(Closed, new WsrouterClose { Code = outcome.Code, Reason = outcome.Reason });
                        Fatal(options.GetToken == null ? "the token was refused: " + outcome.Reason
                                                       : "the token from GetToken was refused: " + outcome.Reason,
                              outcome.Code, outcome.Reason);
                        return;
                    }
                    Raise(Closed, new WsrouterClose { Code = outcome.Code, Reason = outcome.Reason,
                                                     ReconnectIn = TimeSpan.Zero });
                    SetState(WsrouterState.Disconnected);
                    tokenReason = outcome.Reason == "token expired" ? "expired" : "rejected";
                    continue;
                }
                if (!outcome.Good)
                    Attempts++;
                if (!await BackoffAsync(outcome.Code, outcome.Reason, ct).ConfigureAwait(false))
                    return;
            }
        }

        //  A task nobody waits for: its failure is observed, not rethrown
        static void Forget(Task task)
        {
            task.ContinueWith(t => { var e = t.Exception; }, TaskContinuationOptions.OnlyOnFaulted);
        }

        static bool IsTransient(string reason)
        {
            foreach (string r in Transient1008)
                if ((reason ?? "").StartsWith(r, StringComparison.Ordinal))
                    return true;
            return false;
        }

        //  Wait before the next attempt; false if the client stops.
        async Task<bool> BackoffAsync(int code, string reason, CancellationToken ct)
        {
            if (Attempts >= options.MaxAttempts) {
                Raise(Closed, new WsrouterClose { Code = code, Reason = reason });
                Fatal("gave up after " + Attempts + " failed attempts", code, reason);
                return false;
            }
            int n = Math.Min(Math.Max(0, Attempts - 1), 30);
            double ms = Math.Min(options.MaxDelay.TotalMilliseconds,
                                 options.BaseDelay.TotalMilliseconds * Math.Pow(2, n));
            double r;
            lock (random)
                r = random.NextDouble();
            var delay = TimeSpan.FromMilliseconds(Math.Round(ms * (1 - options.Jitter * r)));
            Raise(Closed, new WsrouterClose { Code = code, Reason = reason, ReconnectIn = delay });
            SetState(WsrouterState.Disconnected);
            try {
                await Task.Delay(delay, ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) {
                return false;
            }
            return true;
        }

        async Task<string> FetchTokenAsync(string reason)
        {
            string fresh;
            try {
                fresh = await options.GetToken(reason).ConfigureAwait(false);
            }
            catch (Exception e) {
                RaiseError("GetToken failed: " + e.Message);
                return null;
            }
            if (string.IsNullOrEmpty(fresh)) {
                RaiseError("GetToken gave no token");
                return null;
            }
            lock (gate) {
                token = fresh;
                if (reason != "refresh")
                    tokenUnproven = true;
            }
            return fresh;
        }

        struct Outcome
        {
            public int Code;
            public string Reason;
            public bool Good;
        }

        //  One connection, from the socket to its end.
        async Task<Outcome> ConnectionAsync(CancellationToken ct)
        {
            var outcome = new Outcome { Code = 1006, Reason = "" };
            var ws = new ClientWebSocket();
            if (options.Protocol == WsrouterProtocol.V1)
                ws.Options.AddSubProtocol(V1);
            string t;
            lock (gate)
                t = token;
            var target = url;
            if (!string.IsNullOrEmpty(t)) {
                string sep = string.IsNullOrEmpty(url.Query) ? "?" : "&";
                target = new Uri(url.ToString() + sep + "token=" + Uri.EscapeDataString(t));
            }
            Connections++;
            using (var conn = CancellationTokenSource.CreateLinkedTokenSource(ct))
            using (var opening = new CancellationTokenSource(options.OpenTimeout)) {
                bool good = false;
                //  No welcome (or open) in time: abort this socket
                opening.Token.Register(() => {
                    if (!Volatile.Read(ref good)) {
                        RaiseError("no " + (options.Protocol == WsrouterProtocol.V1 ? "welcome" : "open")
                                   + " within " + options.OpenTimeout.TotalMilliseconds + " ms");
                        try {
                            ws.Abort();
                        }
                        catch (Exception) {
                            //  gone already
                        }
                    }
                });
                var stopping = ct.Register(() => {
                    try {
                        ws.Abort();
                    }
                    catch (Exception) {
                        //  gone already
                    }
                });
                try {
                    await ws.ConnectAsync(target, conn.Token).ConfigureAwait(false);
                    socket = ws;
                    if (options.Protocol == WsrouterProtocol.V1) {
                        if (ws.SubProtocol != V1) {
                            Fatal("the server did not accept " + V1 + " (an older wsrouter?)");
                            return outcome;
                        }
                        var hello = new Dictionary<string, object> { { "type", "hello" } };
                        var recover = RecoverObject();
                        if (recover.Count > 0)
                            hello["recover"] = recover;
                        await SendTextAsync(ws, WsrouterJson.Write(hello), ct).ConfigureAwait(false);
                    }
                    else {
                        SetState(WsrouterState.Connected);
                        var stableAfter = options.StableAfter;
                        Forget(Task.Delay(stableAfter, conn.Token).ContinueWith(task => {
                            if (!task.IsCanceled && ws.State == WebSocketState.Open) {
                                Volatile.Write(ref good, true);
                                MarkGood();
                            }
                        }));
                    }
                    var buffer = new byte[options.ReceiveBufferSize];
                    var message = new MemoryStream();
                    for (;;) {
                        var result = await ws.ReceiveAsync(new ArraySegment<byte>(buffer), conn.Token)
                                             .ConfigureAwait(false);
                        if (result.MessageType == WebSocketMessageType.Close) {
                            outcome.Code = (int)(result.CloseStatus ?? (WebSocketCloseStatus)1005);
                            outcome.Reason = result.CloseStatusDescription ?? "";
                            try {
                                await ws.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "",
                                                          CancellationToken.None).ConfigureAwait(false);
                            }
                            catch (Exception) {
                                //  the peer is gone
                            }
                            break;
                        }
                        message.Write(buffer, 0, result.Count);
                        if (!result.EndOfMessage)
                            continue;
                        byte[] data = message.ToArray();
                        message.SetLength(0);
                        if (options.Protocol == WsrouterProtocol.Raw) {
                            Volatile.Write(ref good, true);
                            MarkGood();
                            bool binary = result.MessageType == WebSocketMessageType.Binary;
                            Raise(Message, new WsrouterMessage {
                                IsBinary = binary, Bytes = binary ? data : null,
                                Text = binary ? null : Encoding.UTF8.GetString(data) });
                        }
                        else if (V1Message(ws, Encoding.UTF8.GetString(data), ct)) {
                            Volatile.Write(ref good, true);
                        }
                    }
                }
                catch (Exception e) {
                    if (!ct.IsCancellationRequested && !(e is OperationCanceledException)
                        && !(e is WebSocketException))
                        RaiseError("connection: " + e.Message);
                }
                finally {
                    stopping.Dispose();
                    socket = null;
                    outcome.Good = Volatile.Read(ref good);
                    ws.Dispose();
                }
            }
            return outcome;
        }

        void MarkGood()
        {
            Attempts = 0;
            lock (gate)
                tokenUnproven = false;
        }

        Dictionary<string, object> RecoverObject()
        {
            var recover = new Dictionary<string, object>();
            lock (gate)
                foreach (var kv in positions)
                    recover[kv.Key] = new Dictionary<string, object> {
                        { "epoch", kv.Value.Epoch }, { "offset", kv.Value.Offset ?? kv.Value.Base } };
            return recover;
        }

        // ---- wsrouter.v1 messages; true when it was the welcome

        bool V1Message(ClientWebSocket ws, string text, CancellationToken ct)
        {
            object m;
            try {
                m = WsrouterJson.Parse(text);
            }
            catch (FormatException) {
                m = null;
            }
            string type = WsrouterJson.GetString(m, "type");
            if (type == null) {
                RaiseError("the server sent a message that is not wsrouter.v1");
                return false;
            }
            switch (type) {
                case "welcome":
                    OnWelcome(ws, m, ct);
                    return true;
                case "pub":
                    OnPub(m);
                    break;
                case "reply":
                    Raise(Reply, Payload(m));
                    break;
                case "refreshed":
                    Expires = WsrouterJson.GetLong(m, "expires");
                    Raise(Refreshed, Expires);
                    ArmRefresh(ws, ct);
                    break;
                case "error": {
                    string error = WsrouterJson.GetString(m, "error") ?? "";
                    if (Session == null && error.StartsWith("recover", StringComparison.Ordinal)) {
                        //  The hello's positions were refused (the server still waits
                        //  for a hello): start those topics over without them
                        List<string> dropped;
                        lock (gate) {
                            dropped = new List<string>(positions.Keys);
                            positions.Clear();
                        }
                        Forget(SendTextAsync(ws, "{\"type\":\"hello\"}", ct));
                        RaiseError("positions refused: " + error);
                        foreach (string topic in dropped)
                            Raise(Resync, new WsrouterResync { Topic = topic, Epoch = null, Offset = 0 });
                        break;
                    }
                    RaiseError(error);
                    break;
                }
                default:
                    break;          //  a later version's message: ignored
            }
            return false;
        }

        static WsrouterMessage Payload(object m)
        {
            string b64 = WsrouterJson.GetString(m, "data_base64");
            if (b64 != null)
                return new WsrouterMessage { IsBinary = true, Bytes = Convert.FromBase64String(b64) };
            return new WsrouterMessage { Text = WsrouterJson.GetString(m, "data") };
        }

        void OnWelcome(ClientWebSocket ws, object m, CancellationToken ct)
        {
            var welcome = new WsrouterWelcome {
                Session = WsrouterJson.GetString(m, "session"),
                Node = WsrouterJson.GetString(m, "node"),
                Expires = WsrouterJson.GetLong(m, "expires"),
            };
            var resync = new List<WsrouterResync>();
            var topics = WsrouterJson.Get(m, "topics") as Dictionary<string, object>;
            lock (gate) {
                var next = new Dictionary<string, Pos>();
                if (topics != null)
                    foreach (var kv in topics) {
                        var t = new WsrouterTopicState {
                            Epoch = WsrouterJson.GetString(kv.Value, "epoch") ?? "",
                            Offset = WsrouterJson.GetLong(kv.Value, "offset") ?? 0,
                            Recovered = WsrouterJson.Get(kv.Value, "recovered") as bool?,
                        };
                        welcome.Topics[kv.Key] = t;
                        Pos old;
                        if (t.Recovered == true && positions.TryGetValue(kv.Key, out old)) {
                            //  The missed publications follow, from the offset offered on
                            long offset = old.Offset ?? old.Base;
                            next[kv.Key] = new Pos { Epoch = old.Epoch, Offset = offset, Base = offset };
                        }
                        else {
                            //  Nothing to continue from: what follows the welcome may
                            //  be at or below its offset (published during the opening)
                            next[kv.Key] = new Pos { Epoch = t.Epoch, Offset = null, Base = t.Offset };
                            if (t.Recovered == false)
                                resync.Add(new WsrouterResync { Topic = kv.Key, Epoch = t.Epoch,
                                                                Offset = t.Offset });
                        }
                    }
                positions.Clear();
                foreach (var kv in next)
                    positions[kv.Key] = kv.Value;
            }
            Session = welcome.Session;
            Node = welcome.Node;
            Expires = welcome.Expires;
            MarkGood();
            SetState(WsrouterState.Connected);
            Raise(Welcome, welcome);
            foreach (var r in resync)
                Raise(Resync, r);
            ArmRefresh(ws, ct);
        }

        void OnPub(object m)
        {
            string topic = WsrouterJson.GetString(m, "topic");
            long? offset = WsrouterJson.GetLong(m, "offset");
            string epoch = WsrouterJson.GetString(m, "epoch");
            if (topic == null)
                return;
            if (offset.HasValue && !string.IsNullOrEmpty(epoch)) {
                lock (gate) {
                    Pos p;
                    if (positions.TryGetValue(topic, out p) && p.Epoch == epoch && p.Offset.HasValue
                        && offset.Value <= p.Offset.Value) {
                        Duplicates++;
                        return;
                    }
                    positions[topic] = new Pos { Epoch = epoch, Offset = offset, Base = offset.Value };
                }
            }
            var message = Payload(m);
            message.Topic = topic;
            message.Offset = offset;
            message.Epoch = epoch;
            Raise(Message, message);
        }

        // ---- token refresh (v1)

        int refreshArmed;           //  generation of the armed refresh

        void ArmRefresh(ClientWebSocket ws, CancellationToken ct)
        {
            int generation = Interlocked.Increment(ref refreshArmed);
            if (!Expires.HasValue || options.GetToken == null)
                return;
            var now = DateTime.UtcNow;
            var expires = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc).AddSeconds(Expires.Value);
            var due = expires - options.RefreshBefore - now;
            var spaced = lastRefresh + options.MinRefreshInterval - now;
            if (spaced > due)
                due = spaced;
            if (due < TimeSpan.Zero)
                due = TimeSpan.Zero;
            if (due > TimeSpan.FromDays(24))
                return;
            Task.Run(async () => {
                try {
                    await Task.Delay(due, ct).ConfigureAwait(false);
                }
                catch (OperationCanceledException) {
                    return;
                }
                if (generation != Volatile.Read(ref refreshArmed) || ws != socket)
                    return;
                lastRefresh = DateTime.UtcNow;
                string fresh = await FetchTokenAsync("refresh").ConfigureAwait(false);
                if (fresh == null || generation != Volatile.Read(ref refreshArmed) || ws != socket)
                    return;
                var refresh = new Dictionary<string, object> { { "type", "refresh" }, { "token", fresh } };
                await SendTextAsync(ws, WsrouterJson.Write(refresh), ct).ConfigureAwait(false);
            });
        }

        // ---- sending

        async Task<bool> SendTextAsync(ClientWebSocket ws, string text, CancellationToken ct)
        {
            return await SendRawAsync(ws, Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, ct)
                         .ConfigureAwait(false);
        }

        async Task<bool> SendRawAsync(ClientWebSocket ws, byte[] data, WebSocketMessageType type,
                                      CancellationToken ct)
        {
            await sendLock.WaitAsync().ConfigureAwait(false);
            try {
                if (ws.State != WebSocketState.Open)
                    return false;
                await ws.SendAsync(new ArraySegment<byte>(data), type, true, ct).ConfigureAwait(false);
                return true;
            }
            catch (Exception) {
                return false;       //  the receive side sees the end and reconnects
            }
            finally {
                sendLock.Release();
            }
        }

        //  Upstream: text. False when not connected (nothing is queued).
        public Task<bool> SendAsync(string text)
        {
            var ws = socket;
            if (ws == null || state != WsrouterState.Connected)
                return Task.FromResult(false);
            if (options.Protocol == WsrouterProtocol.Raw)
                return SendRawAsync(ws, Encoding.UTF8.GetBytes(text), WebSocketMessageType.Text, stop.Token);
            var send = new Dictionary<string, object> { { "type", "send" }, { "data", text } };
            return SendTextAsync(ws, WsrouterJson.Write(send), stop.Token);
        }

        //  Upstream: binary.
        public Task<bool> SendAsync(byte[] data)
        {
            var ws = socket;
            if (ws == null || state != WsrouterState.Connected)
                return Task.FromResult(false);
            if (options.Protocol == WsrouterProtocol.Raw)
                return SendRawAsync(ws, data, WebSocketMessageType.Binary, stop.Token);
            var send = new Dictionary<string, object> {
                { "type", "send" }, { "data_base64", Convert.ToBase64String(data) } };
            return SendTextAsync(ws, WsrouterJson.Write(send), stop.Token);
        }

        //  Fire and forget, e.g. from Update(): false when not connected.
        public bool Send(string text)
        {
            if (socket == null || state != WsrouterState.Connected)
                return false;
            Forget(SendAsync(text));
            return true;
        }

        public bool Send(byte[] data)
        {
            if (socket == null || state != WsrouterState.Connected)
                return false;
            Forget(SendAsync(data));
            return true;
        }
    }
}
