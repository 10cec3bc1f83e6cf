//  wsr_topic — a session worker's topic table: topic key → member sessions
//
//  Delivery is a hash lookup and a walk of that topic's members: never a scan
//  of all sessions. Each membership is an intrusive doubly-linked node, so a
//  session leaves in O(1). The table tells the caller when a topic gets its
//  first member or loses its last, which is when the worker subscribes or
//  unsubscribes its SUB socket (first-in subscribes, last-out unsubscribes).

#include "wsr_classes.h"

typedef struct _s_entry_t s_entry_t;

struct _wsr_topic_member_t {
    void *owner;                    //  the session; not owned
    s_entry_t *entry;               //  topic this membership belongs to
    wsr_topic_member_t *prev;       //  neighbours in the topic's list
    wsr_topic_member_t *next;
};

struct _s_entry_t {
    wsr_topic_member_t *head;       //  first member
    size_t members;                 //  list length
    uint64_t mark;                  //  what was last delivered (handover), 0 = nothing
    uint8_t mark_kind;              //  WSR_HANDOVER_MARK_*
    s_entry_t *all_prev, *all_next; //  neighbours in the list of every topic (walks)
    char key [];                    //  topic key, NUL-terminated
};

struct _wsr_topic_t {
    zhashx_t *topics;               //  key → s_entry_t (owned)
    size_t max_topics;              //  configured bound on distinct topics
    s_entry_t *all;                 //  every topic, newest first (wsr_topic_walk)
    s_entry_t *cursor;              //  next topic of the walk under way, NULL at its end
    bool walking;                   //  a walk is under way
};

//  --------------------------------------------------------------------------
//  Build "user:u1" / "channel:c"; the NUL is part of the key on the wire.
int
wsr_topic_key (char *buf, size_t size, const char *kind, const char *id)
{
    assert (buf && kind && id);
    size_t kind_len = strlen (kind), id_len = strlen (id);
    if (kind_len + id_len + 1 > size)
        return -1;
    memcpy (buf, kind, kind_len);
    memcpy (buf + kind_len, id, id_len + 1);
    return (int) (kind_len + id_len + 1);
}

static void
s_entry_free (void **item_p)
{
    s_entry_t *entry = (s_entry_t *) *item_p;
    wsr_topic_member_t *member = entry->head;
    while (member) {
        wsr_topic_member_t *next = member->next;
        free (member);
        member = next;
    }
    free (entry);
    *item_p = NULL;
}

//  --------------------------------------------------------------------------
//  Create an empty table.
wsr_topic_t *
wsr_topic_new (size_t max_topics)
{
    wsr_topic_t *self = (wsr_topic_t *) zmalloc (sizeof (wsr_topic_t));
    self->max_topics = max_topics;
    self->topics = zhashx_new ();
    assert (self->topics);
    zhashx_set_destructor (self->topics, s_entry_free);
    //  The key lives in the entry: the hash neither copies nor frees it
    zhashx_set_key_duplicator (self->topics, NULL);
    zhashx_set_key_destructor (self->topics, NULL);
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy the table and its memberships.
void
wsr_topic_destroy (wsr_topic_t **self_p)
{
    assert (self_p);
    if (*self_p) {
        wsr_topic_t *self = *self_p;
        zhashx_destroy (&self->topics);
        free (self);
        *self_p = NULL;
    }
}

//  --------------------------------------------------------------------------
//  Join a topic; reports whether the caller must subscribe.
wsr_topic_member_t *
wsr_topic_join (wsr_topic_t *self, const char *topic, void *owner, bool *first)
{
    assert (self && topic && first);
    s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->topics, topic);
    *first = false;
    if (!entry) {
        if (zhashx_size (self->topics) >= self->max_topics)
            return NULL;
        size_t len = strlen (topic);
        entry = (s_entry_t *) zmalloc (sizeof (s_entry_t) + len + 1);
        memcpy (entry->key, topic, len + 1);
        //  At the head: behind a walk's cursor, so a walk always ends
        entry->all_next = self->all;
        if (self->all)
            self->all->all_prev = entry;
        self->all = entry;
        zhashx_insert (self->topics, entry->key, entry);
        *first = true;
    }
    wsr_topic_member_t *member = (wsr_topic_member_t *) zmalloc (sizeof *member);
    member->owner = owner;
    member->entry = entry;
    member->next = entry->head;
    if (entry->head)
        entry->head->prev = member;
    entry->head = member;
    entry->members++;
    return member;
}

//  --------------------------------------------------------------------------
//  Leave; reports whether the caller must unsubscribe.
bool
wsr_topic_leave (wsr_topic_t *self, wsr_topic_member_t **member_p)
{
    assert (self && member_p);
    wsr_topic_member_t *member = *member_p;
    if (!member)
        return false;
    s_entry_t *entry = member->entry;
    if (member->prev)
        member->prev->next = member->next;
    else
        entry->head = member->next;
    if (member->next)
        member->next->prev = member->prev;
    free (member);
    *member_p = NULL;
    if (--entry->members == 0) {
        if (self->cursor == entry)
            self->cursor = entry->all_next;
        if (entry->all_prev)
            entry->all_prev->all_next = entry->all_next;
        else
            self->all = entry->all_next;
        if (entry->all_next)
            entry->all_next->all_prev = entry->all_prev;
        zhashx_delete (self->topics, entry->key);
        return true;
    }
    return false;
}

//  --------------------------------------------------------------------------
//  First member of a topic.
wsr_topic_member_t *
wsr_topic_first (wsr_topic_t *self, const char *topic)
{
    assert (self && topic);
    s_entry_t *entry = (s_entry_t *) zhashx_lookup (self->topics, topic);
    return entry? entry->head: NULL;
}

//  --------------------------------------------------------------------------
//  Next member.
wsr_topic_member_t *
wsr_topic_next (wsr_topic_member_t *member)
{
    assert (member);
    return member->next;
}

//  --------------------------------------------------------------------------
//  Owner of a membership.
void *
wsr_topic_owner (wsr_topic_member_t *member)
{
    assert (member);
    return member->owner;
}

//  --------------------------------------------------------------------------
//  Key of a membership's topic.
const char *
wsr_topic_member_key (wsr_topic_member_t *member)
{
    assert (member);
    return member->entry->key;
}

//  --------------------------------------------------------------------------
//  The topic's mark: what was last delivered on it.
void
wsr_topic_set_mark (wsr_topic_member_t *member, int kind, uint64_t value)
{
    assert (member);
    member->entry->mark_kind = (uint8_t) kind;
    member->entry->mark = value;
}

uint64_t
wsr_topic_mark (wsr_topic_member_t *member, int *kind_p)
{
    assert (member && kind_p);
    *kind_p = member->entry->mark_kind;
    return member->entry->mark;
}

//  --------------------------------------------------------------------------
//  A step of a walk over every topic with its count. The walk follows the
//  list of all topics, so it survives joins (new topics go behind the
//  cursor: not visited) and leaves (a leaving cursor moves on) between
//  steps; a zhashx cursor would not.
bool
wsr_topic_walk (wsr_topic_t *self, size_t budget, wsr_topic_walk_fn *fn, void *arg)
{
    assert (self && fn);
    if (!self->walking) {
        self->cursor = self->all;
        self->walking = true;
    }
    for (; self->cursor && budget > 0; budget--) {
        s_entry_t *entry = self->cursor;
        self->cursor = entry->all_next;
        fn (entry->key, entry->members, arg);
    }
    if (self->cursor)
        return false;
    self->walking = false;
    return true;
}

//  --------------------------------------------------------------------------
//  Topics with members.
size_t
wsr_topic_size (wsr_topic_t *self)
{
    assert (self);
    return zhashx_size (self->topics);
}

//  --------------------------------------------------------------------------
//  Walk the keys (when the bridge must learn them again).
const char *
wsr_topic_first_key (wsr_topic_t *self)
{
    assert (self);
    s_entry_t *entry = (s_entry_t *) zhashx_first (self->topics);
    return entry? entry->key: NULL;
}

const char *
wsr_topic_next_key (wsr_topic_t *self)
{
    assert (self);
    s_entry_t *entry = (s_entry_t *) zhashx_next (self->topics);
    return entry? entry->key: NULL;
}

//  --------------------------------------------------------------------------
//  Selftest

static void
s_count_members (const char *key, size_t members, void *arg)
{
    assert (key);
    *(size_t *) arg += members;
}

void
wsr_topic_test (bool verbose)
{
    (void) verbose;
    char key [WSR_TOPIC_MAX];
    assert (wsr_topic_key (key, sizeof key, WSR_TOPIC_USER, "u1") == 8);
    assert (streq (key, "user:u1"));
    char small [6];
    assert (wsr_topic_key (small, sizeof small, WSR_TOPIC_USER, "u1") == -1);

    wsr_topic_t *topics = wsr_topic_new (2);
    int a = 1, b = 2, c = 3;
    bool first;
    wsr_topic_member_t *ma = wsr_topic_join (topics, "user:u1", &a, &first);
    assert (ma && first);
    wsr_topic_member_t *mb = wsr_topic_join (topics, "user:u1", &b, &first);
    assert (mb && !first);
    size_t walked = 0;
    assert (wsr_topic_walk (topics, 10, s_count_members, &walked));
    assert (walked == 2);
    wsr_topic_member_t *mc = wsr_topic_join (topics, "user:u10", &c, &first);
    assert (mc && first);
    //  Table full: a third distinct topic is refused
    wsr_topic_member_t *full = wsr_topic_join (topics, "user:u2", &c, &first);
    assert (full == NULL);
    assert (wsr_topic_size (topics) == 2);

    //  Exact keys: u1 has a and b only
    int seen = 0;
    for (wsr_topic_member_t *m = wsr_topic_first (topics, "user:u1"); m;
         m = wsr_topic_next (m)) {
        int *owner = (int *) wsr_topic_owner (m);
        assert (owner == &a || owner == &b);
        seen++;
    }
    assert (seen == 2);
    assert (wsr_topic_first (topics, "user:u") == NULL);
    //  The keys, each once
    int keys = 0, u1 = 0, u10 = 0;
    for (const char *key = wsr_topic_first_key (topics); key; key = wsr_topic_next_key (topics)) {
        keys++;
        u1 += streq (key, "user:u1");
        u10 += streq (key, "user:u10");
    }
    assert (keys == 2 && u1 == 1 && u10 == 1);

    assert (streq (wsr_topic_member_key (ma), "user:u1"));
    assert (!wsr_topic_leave (topics, &ma));
    assert (ma == NULL);
    assert (wsr_topic_leave (topics, &mb));
    assert (wsr_topic_first (topics, "user:u1") == NULL);
    assert (wsr_topic_size (topics) == 1);
    //  Destroy frees memberships still present (mc)
    wsr_topic_destroy (&topics);
    assert (topics == NULL);

    //  Marks belong to the topic: every member sees the last one set
    wsr_topic_t *marked = wsr_topic_new (4);
    int kind = -1;
    wsr_topic_member_t *m1 = wsr_topic_join (marked, "user:m", &a, &first);
    wsr_topic_member_t *m2 = wsr_topic_join (marked, "user:m", &b, &first);
    assert (wsr_topic_mark (m1, &kind) == 0 && kind == 0);
    wsr_topic_set_mark (m2, 2, 99);
    assert (wsr_topic_mark (m1, &kind) == 99 && kind == 2);
    wsr_topic_leave (marked, &m1);
    wsr_topic_leave (marked, &m2);
    wsr_topic_destroy (&marked);
    //  A walk in steps survives leaves and joins between them: a topic gone
    //  is not visited, one added is not either, and the walk ends
    topics = wsr_topic_new (100);
    wsr_topic_member_t *members [5];
    for (int i = 0; i < 5; i++) {
        snprintf (key, sizeof key, "channel:c%d", i);
        members [i] = wsr_topic_join (topics, key, &a, &first);
    }
    //  Newest first: c4, c3 now; c2 next
    walked = 0;
    assert (!wsr_topic_walk (topics, 2, s_count_members, &walked) && walked == 2);
    assert (wsr_topic_leave (topics, &members [2]));        //  the cursor's topic
    wsr_topic_member_t *late = wsr_topic_join (topics, "channel:late", &a, &first);
    assert (!wsr_topic_walk (topics, 1, s_count_members, &walked) && walked == 3);    //  c1
    assert (wsr_topic_walk (topics, 5, s_count_members, &walked) && walked == 4);     //  c0
    //  The next walk starts afresh and sees every topic
    walked = 0;
    assert (wsr_topic_walk (topics, 100, s_count_members, &walked) && walked == 5);
    wsr_topic_leave (topics, &late);
    wsr_topic_destroy (&topics);
}
