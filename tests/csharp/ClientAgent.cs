// ClientAgent — drives clients/csharp's WsrouterClient for tests/csharp_client.py.
//
// The main thread plays Unity's: it runs a SynchronizationContext loop, and
// the clients are constructed on it, so every event must arrive on it
// (each event line says "main": true|false). Commands come on stdin, one
// JSON object per line; events go to stdout, one JSON object per line:
//
//   {"cmd":"new","name":"a","url":"ws://...","protocol":"v1"|"raw","token":"JWT",
//    "get_token":true,"refresh_before":60,"base_ms":50,"max_ms":500,"max_attempts":N}
//   {"cmd":"token","name":"a","token":"JWT"}    answers a token_request
//   {"cmd":"send","name":"a","text":"..."}
//   {"cmd":"close","name":"a"}
//   {"cmd":"quit"}
//
//   {"ev":"ready"}
//   {"name":"a","ev":"state"|"message"|"error"|"welcome"|"resync"|"reply"|"refreshed"|
//    "closed"|"token_request", ..., "main":true}

using System;
using System.Collections.Concurrent;
using System.Collections.Generic;
using System.Threading;
using System.Threading.Tasks;
using Wsrouter;

sealed class MainLoop : SynchronizationContext
{
    readonly BlockingCollection<KeyValuePair<SendOrPostCallback, object>> queue =
        new BlockingCollection<KeyValuePair<SendOrPostCallback, object>>();

    public override void Post(SendOrPostCallback d, object state)
    {
        queue.Add(new KeyValuePair<SendOrPostCallback, object>(d, state));
    }

    public override void Send(SendOrPostCallback d, object state)
    {
        throw new NotSupportedException();
    }

    public void Run()
    {
        foreach (var item in queue.GetConsumingEnumerable())
            item.Key(item.Value);
    }

    public void Stop()
    {
        queue.CompleteAdding();
    }
}

static class ClientAgent
{
    static int mainThread;
    static readonly object outLock = new object();
    static readonly Dictionary<string, WsrouterClient> clients = new Dictionary<string, WsrouterClient>();
    static readonly Dictionary<string, TaskCompletionSource<string>> tokenWaits =
        new Dictionary<string, TaskCompletionSource<string>>();

    static void Emit(string name, string ev, Dictionary<string, object> fields)
    {
        fields = fields ?? new Dictionary<string, object>();
        if (name != null)
            fields["name"] = name;
        fields["ev"] = ev;
        fields["main"] = Thread.CurrentThread.ManagedThreadId == mainThread;
        string line = WsrouterJson.Write(fields);
        lock (outLock) {
            Console.Out.WriteLine(line);
            Console.Out.Flush();
        }
    }

    static double Num(object cmd, string key, double dflt)
    {
        object v = WsrouterJson.Get(cmd, key);
        if (v is long)
            return (long)v;
        if (v is double)
            return (double)v;
        return dflt;
    }

    static void NewClient(object cmd)
    {
        string name = WsrouterJson.GetString(cmd, "name");
        var options = new WsrouterOptions {
            Protocol = WsrouterJson.GetString(cmd, "protocol") == "raw" ? WsrouterProtocol.Raw
                                                                        : WsrouterProtocol.V1,
            Token = WsrouterJson.GetString(cmd, "token"),
            BaseDelay = TimeSpan.FromMilliseconds(Num(cmd, "base_ms", 250)),
            MaxDelay = TimeSpan.FromMilliseconds(Num(cmd, "max_ms", 30000)),
            RefreshBefore = TimeSpan.FromSeconds(Num(cmd, "refresh_before", 60)),
            MaxAttempts = (int)Num(cmd, "max_attempts", int.MaxValue),
        };
        if (WsrouterJson.Get(cmd, "get_token") is bool && (bool)WsrouterJson.Get(cmd, "get_token")) {
            options.GetToken = reason => {
                var tcs = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (tokenWaits)
                    tokenWaits[name] = tcs;
                Emit(name, "token_request", new Dictionary<string, object> { { "reason", reason } });
                return tcs.Task;
            };
        }
        var c = new WsrouterClient(WsrouterJson.GetString(cmd, "url"), options);
        c.StateChanged += s => Emit(name, "state", new Dictionary<string, object> { { "state", s.ToString() } });
        c.Message += m => Emit(name, "message", new Dictionary<string, object> {
            { "topic", m.Topic }, { "offset", m.Offset }, { "epoch", m.Epoch }, { "binary", m.IsBinary },
            { "data", m.IsBinary ? Convert.ToBase64String(m.Bytes) : m.Text } });
        c.Error += e => Emit(name, "error", new Dictionary<string, object> {
            { "message", e.Message }, { "code", e.CloseCode }, { "reason", e.CloseReason }, { "fatal", e.Fatal } });
        c.Welcome += w => {
            var topics = new Dictionary<string, object>();
            foreach (var kv in w.Topics)
                topics[kv.Key] = new Dictionary<string, object> {
                    { "epoch", kv.Value.Epoch }, { "offset", kv.Value.Offset }, { "recovered", kv.Value.Recovered } };
            Emit(name, "welcome", new Dictionary<string, object> {
                { "session", w.Session }, { "node", w.Node }, { "expires", w.Expires }, { "topics", topics } });
        };
        c.Resync += r => Emit(name, "resync", new Dictionary<string, object> {
            { "topic", r.Topic }, { "epoch", r.Epoch }, { "offset", r.Offset } });
        c.Reply += m => Emit(name, "reply", new Dictionary<string, object> { { "data", m.Text } });
        c.Refreshed += x => Emit(name, "refreshed", new Dictionary<string, object> { { "expires", x } });
        c.Closed += x => Emit(name, "closed", new Dictionary<string, object> {
            { "code", x.Code }, { "reason", x.Reason },
            { "reconnect_ms", x.ReconnectIn.HasValue ? (object)(long)x.ReconnectIn.Value.TotalMilliseconds : null },
            { "connections", c.Connections } });
        clients[name] = c;
        c.Connect();
    }

    static bool Command(string line)
    {
        object cmd = WsrouterJson.Parse(line);
        string what = WsrouterJson.GetString(cmd, "cmd");
        string name = WsrouterJson.GetString(cmd, "name");
        switch (what) {
            case "new":
                NewClient(cmd);
                break;
            case "token": {
                TaskCompletionSource<string> tcs;
                lock (tokenWaits) {
                    tokenWaits.TryGetValue(name, out tcs);
                    tokenWaits.Remove(name);
                }
                if (tcs != null)
                    tcs.SetResult(WsrouterJson.GetString(cmd, "token"));
                break;
            }
            case "send":
                Emit(name, "sent", new Dictionary<string, object> {
                    { "ok", clients[name].Send(WsrouterJson.GetString(cmd, "text")) } });
                break;
            case "close":
                clients[name].Close();
                Emit(name, "closed_by_agent", new Dictionary<string, object> {
                    { "connections", clients[name].Connections }, { "duplicates", clients[name].Duplicates } });
                break;
            case "quit":
                foreach (var c in clients.Values)
                    c.Close();
                return false;
            default:
                Emit(null, "bad_command", new Dictionary<string, object> { { "line", line } });
                break;
        }
        return true;
    }

    static int Main()
    {
        mainThread = Thread.CurrentThread.ManagedThreadId;
        var loop = new MainLoop();
        SynchronizationContext.SetSynchronizationContext(loop);
        var reader = new Thread(() => {
            string line;
            while ((line = Console.In.ReadLine()) != null) {
                string l = line;
                loop.Post(_ => {
                    bool more;
                    try {
                        more = Command(l);
                    }
                    catch (Exception e) {
                        Emit(null, "agent_error", new Dictionary<string, object> { { "message", e.ToString() } });
                        more = true;
                    }
                    if (!more)
                        loop.Stop();
                }, null);
            }
            try {
                loop.Post(_ => loop.Stop(), null);
            }
            catch (InvalidOperationException) {
                //  stopped already
            }
        });
        reader.IsBackground = true;
        reader.Start();
        Emit(null, "ready", null);
        loop.Run();
        return 0;
    }
}
