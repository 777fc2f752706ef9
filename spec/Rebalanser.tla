----------------------------- MODULE Rebalanser -----------------------------
(***************************************************************************)
(* The Rebalanser protocol of docs/design.md section 4, at the granularity *)
(* of store transactions.                                                  *)
(*                                                                         *)
(* A *process* is one incarnation of a member name and is identified with *)
(* its store session: Procs = {<<m, i>>}.  Incarnation i+1 of name m is a *)
(* restart of m reusing its name; it may start while incarnation i is      *)
(* still running (paused or partitioned), so two processes can carry the   *)
(* same name at once.  Claims, registrations, the leader key and drain     *)
(* markers are owned by sessions (processes), never by names.              *)
(*                                                                         *)
(* Time is abstract.  The local lease rule (DESIGN section 8 rules 2-3) is *)
(* modelled by the flag lapsed[p]: the process's local deadline passed     *)
(* (a pause, a partition, a slow store); at that instant its application   *)
(* has stopped, so all its leases are gone.  The store may expire a        *)
(* session only while its process is lapsed or not running: that is the    *)
(* guarantee "deadline < expiry" that the real deadline arithmetic buys.   *)
(* A lapsed process grants nothing and creates no claim until a keepalive  *)
(* proves its session alive again.                                         *)
(***************************************************************************)
EXTENDS Naturals, FiniteSets

CONSTANTS
    Members,      \* member names
    Joined,       \* names whose first incarnation is running and registered initially
    Resources,    \* resource ids the admin may add
    Restartable,  \* names that get a second incarnation (a restart under the same name)
    MaxChanges,   \* budget of environment changes: admin ops, crashes, pauses,
                  \* leaves, Indeterminate outcomes, restarts beside a live process
    BadRemove,    \* TRUE = the known-bad variant: removing a resource deletes its claim
    Barrier,      \* TRUE = the group is in global-barrier mode (DESIGN section 4.10)
    BadBarrier,   \* TRUE = the known-bad variant: an acknowledgement of an older round counts
    NoS           \* "no session" (a model value)

ASSUME Joined \subseteq Members /\ Restartable \subseteq Members /\ MaxChanges \in Nat
ASSUME BadRemove \in BOOLEAN /\ Barrier \in BOOLEAN /\ BadBarrier \in BOOLEAN

Procs == {<<m, 1>> : m \in Members} \cup {<<m, 2>> : m \in Restartable}
Name(p) == p[1]

VARIABLES
    \* ---- the store (linearizable; DESIGN section 3) -------------------
    alive,    \* sessions not expired or closed
    reg,      \* reg[m]: session owning members/<m>, or NoS
    leader,   \* session owning the leader key, or NoS
    epoch,    \* the persistent epoch counter
    asg,      \* asg[m] = [s |-> session the assignment is for, set |-> resources]
    res,      \* resources/: the resource set managed by the admin
    claim,    \* claim[r]: session owning claims/<r>, or NoS
    tok,      \* tok[r]: creation revision of the latest claims/<r> (the fencing token)
    drain,    \* sessions that own a draining marker (graceful leave)
    bar,      \* barrier mode: barrier = [e |-> epoch, r |-> round, stop |-> stop phase?]
    ack,      \* barrier mode: ack[m] = [s |-> owning session, e |-> epoch, r |-> round]
    \* ---- processes (local state, indexed by session) -----------------
    pst,      \* "idle" (not started) | "on" | "leaving" | "off" (crashed or expired) | "left"
    lapsed,   \* the local lease deadline passed: no valid lease, no grant, no create
    desired,  \* the process's (possibly stale) copy of its assignment
    cst,      \* cst[p][r]: "none" | "held" (proved own claim) | "unres" (Indeterminate
              \* create, to be resolved) | "del" (Indeterminate delete, to be repeated)
    ctok,     \* ctok[p][r]: token of the claim in "held" / "del"
    lease,    \* lease[p][r]: token of the valid lease the application holds, 0 = none
    coord,    \* coord[p]: the epoch p coordinates under, 0 = not coordinator
    seen,     \* seen[p]: the barrier record as p last read it (with its assignment)
    \* ---- environment and history -------------------------------------
    changes,  \* remaining budget of environment changes ("changes stop" at 0)
    lastGrant,\* lastGrant[r] = [t |-> token, p |-> process] of the latest grant (history)
    started,  \* barrier mode: the latest round whose start the store committed (history)
    lround    \* lround[p][r]: the round started in the store when lease[p][r] was granted

store == <<alive, reg, leader, epoch, asg, res, claim, tok, drain, bar, ack>>
local == <<pst, lapsed, desired, cst, ctok, lease, coord, seen>>
hist  == <<lastGrant, started, lround>>
vars  == <<store, local, changes, hist>>

NoAsg == [s |-> NoS, set |-> {}]
NoAck == [s |-> NoS, e |-> 0, r |-> 0]
NoBar == [e |-> 0, r |-> 0, stop |-> FALSE]
Running(p) == pst[p] \in {"on", "leaving"}

First == {<<m, 1>> : m \in Joined}

Init ==
    /\ alive = First
    /\ reg = [m \in Members |-> IF m \in Joined THEN <<m, 1>> ELSE NoS]
    /\ leader = NoS
    /\ epoch = 0
    /\ asg = [m \in Members |-> NoAsg]
    /\ res = Resources
    /\ claim = [r \in Resources |-> NoS]
    /\ tok = [r \in Resources |-> 0]
    /\ drain = {}
    /\ bar = NoBar
    /\ ack = [m \in Members |-> NoAck]
    /\ pst = [p \in Procs |-> IF p \in First THEN "on" ELSE "idle"]
    /\ lapsed = [p \in Procs |-> FALSE]
    /\ desired = [p \in Procs |-> {}]
    /\ cst = [p \in Procs |-> [r \in Resources |-> "none"]]
    /\ ctok = [p \in Procs |-> [r \in Resources |-> 0]]
    /\ lease = [p \in Procs |-> [r \in Resources |-> 0]]
    /\ coord = [p \in Procs |-> 0]
    /\ seen = [p \in Procs |-> NoBar]
    /\ changes = MaxChanges
    /\ lastGrant = [r \in Resources |-> [t |-> 0, p |-> NoS]]
    /\ started = 0
    /\ lround = [p \in Procs |-> [r \in Resources |-> 0]]

\* Spend one unit of the environment budget.
Spend == changes > 0 /\ changes' = changes - 1

\* Local state of a process that stopped (crash, expiry noticed, close).
Reset(p) ==
    /\ lapsed' = [lapsed EXCEPT ![p] = FALSE]
    /\ desired' = [desired EXCEPT ![p] = {}]
    /\ cst' = [cst EXCEPT ![p] = [r \in Resources |-> "none"]]
    /\ ctok' = [ctok EXCEPT ![p] = [r \in Resources |-> 0]]
    /\ lease' = [lease EXCEPT ![p] = [r \in Resources |-> 0]]
    /\ coord' = [coord EXCEPT ![p] = 0]
    /\ seen' = [seen EXCEPT ![p] = NoBar]

\* The store ends session s: every key it owns vanishes (expiry or close).
EndSession(s) ==
    /\ alive' = alive \ {s}
    /\ reg' = [m \in Members |-> IF reg[m] = s THEN NoS ELSE reg[m]]
    /\ leader' = IF leader = s THEN NoS ELSE leader
    /\ claim' = [r \in Resources |-> IF claim[r] = s THEN NoS ELSE claim[r]]
    /\ drain' = drain \ {s}
    /\ ack' = [m \in Members |-> IF ack[m].s = s THEN NoAck ELSE ack[m]]

-----------------------------------------------------------------------------
(* The assignor: deterministic, balanced +-1, sticky (fewest moves).       *)

Active == {m \in Members : reg[m] # NoS /\ reg[m] \notin drain}
Cur(m) == IF asg[m].s = reg[m] THEN asg[m].set \cap res ELSE {}
Owned(f, m) == {r \in res : f[r] = m}
Balanced(f, A) ==
    \A a, b \in A : Cardinality(Owned(f, a)) <= Cardinality(Owned(f, b)) + 1
Moves(f) == Cardinality({r \in res : r \notin Cur(f[r])})

\* Every balanced assignment of res over the Active names with the fewest moves is a
\* possible target: the model covers any assignor with those properties, ties included.
AsgOf(f) == [m \in Members |->
                IF m \in Active THEN [s |-> reg[m], set |-> Owned(f, m)] ELSE NoAsg]
Targets ==
    IF Active = {} THEN {[m \in Members |-> NoAsg]}
    ELSE LET Cands == {f \in [res -> Active] : Balanced(f, Active)}
             mv == {Moves(f) : f \in Cands}
             least == CHOOSE k \in mv : \A j \in mv : k <= j
         IN {AsgOf(f) : f \in {g \in Cands : Moves(g) = least}}

-----------------------------------------------------------------------------
(* Processes: start, register, keep alive                                  *)

\* Start incarnation p: open a session.  <<m, 2>> starts once <<m, 1>> was started;
\* if <<m, 1>> still runs (paused, partitioned), this is a restart beside a live
\* process and costs one unit of the change budget.
Start(p) ==
    /\ pst[p] = "idle"
    /\ \/ p[2] = 1 /\ UNCHANGED changes
       \/ p[2] = 2 /\ pst[<<Name(p), 1>>] = "off" /\ UNCHANGED changes
       \/ p[2] = 2 /\ Running(<<Name(p), 1>>) /\ Spend
    /\ pst' = [pst EXCEPT ![p] = "on"]
    /\ alive' = alive \cup {p}
    /\ UNCHANGED <<reg, leader, epoch, asg, res, claim, tok, drain, ack, bar>>
    /\ UNCHANGED <<lapsed, desired, cst, ctok, lease, coord, seen, hist>>

\* Create members/<m> (session-owned, create-if-absent).  A restarted process waits
\* until the old session's registration is gone.
Register(p) ==
    /\ pst[p] = "on" /\ p \in alive
    /\ reg[Name(p)] = NoS
    /\ reg' = [reg EXCEPT ![Name(p)] = p]
    /\ UNCHANGED <<alive, leader, epoch, asg, res, claim, tok, drain, ack, bar, local, changes, hist>>

\* The local deadline passes (pause, partition, store unreachable): leases are revoked
\* and the application stopped before it.
Lapse(p) ==
    /\ Running(p) /\ ~lapsed[p]
    /\ Spend
    /\ lapsed' = [lapsed EXCEPT ![p] = TRUE]
    /\ lease' = [lease EXCEPT ![p] = [r \in Resources |-> 0]]
    /\ UNCHANGED <<store, pst, desired, cst, ctok, coord, seen, hist>>

\* A keepalive succeeds: the session is proved alive and the deadline moves on.
KeepAlive(p) ==
    /\ Running(p) /\ lapsed[p] /\ p \in alive
    /\ lapsed' = [lapsed EXCEPT ![p] = FALSE]
    /\ UNCHANGED <<store, pst, desired, cst, ctok, lease, coord, seen, changes, hist>>

\* The store expires a session.  Only when its process cannot hold a lease any more:
\* crashed, or past its local deadline.
Expire(s) ==
    /\ s \in alive
    /\ ~Running(s) \/ lapsed[s]
    /\ EndSession(s)
    /\ UNCHANGED <<epoch, asg, res, tok, bar, local, changes, hist>>

\* The process learns its session expired: it stops; the next incarnation may start.
LearnExpired(p) ==
    /\ Running(p) /\ p \notin alive
    /\ pst' = [pst EXCEPT ![p] = "off"]
    /\ Reset(p)
    /\ UNCHANGED <<store, changes, hist>>

\* Crash (kill -9): the process and its application die; the session lives until expiry.
Crash(p) ==
    /\ Running(p)
    /\ Spend
    /\ pst' = [pst EXCEPT ![p] = "off"]
    /\ Reset(p)
    /\ UNCHANGED <<store, hist>>

-----------------------------------------------------------------------------
(* Processes: claims and leases (reconciliation, DESIGN section 4)         *)

\* Read the assignment (at any time: a process may act on a stale copy).  An assignment
\* written for another session of the same name is not ours.  In barrier mode the read
\* includes the barrier record: in a stop phase the desired set is empty (stop everything).
ReadAssignment(p) ==
    /\ Running(p)
    /\ LET d == IF asg[Name(p)].s = p /\ ~bar.stop THEN asg[Name(p)].set ELSE {}
       IN /\ <<desired[p], seen[p]>> # <<d, bar>>
          /\ desired' = [desired EXCEPT ![p] = d]
          /\ seen' = [seen EXCEPT ![p] = bar]
    /\ UNCHANGED <<store, pst, lapsed, cst, ctok, lease, coord, changes, hist>>

\* Revoke a lease that left the desired set; the application stops (release).
Revoke(p, r) ==
    /\ Running(p) /\ lease[p][r] > 0 /\ r \notin desired[p]
    /\ lease' = [lease EXCEPT ![p][r] = 0]
    /\ UNCHANGED <<store, pst, lapsed, desired, cst, ctok, coord, seen, changes, hist>>

\* Create claims/<r> (session-owned, create-if-absent) for a desired resource whose
\* claim is absent.  Only with room before the deadline.  Replies: Ok, or Indeterminate
\* (applied or not; the writer does not know which).
CreateClaim(p, r) ==
    /\ Running(p) /\ ~lapsed[p] /\ p \in alive
    /\ r \in desired[p] /\ cst[p][r] = "none" /\ lease[p][r] = 0
    /\ claim[r] = NoS
    /\ \/ /\ claim' = [claim EXCEPT ![r] = p]               \* Ok
          /\ tok' = [tok EXCEPT ![r] = tok[r] + 1]
          /\ cst' = [cst EXCEPT ![p][r] = "held"]
          /\ ctok' = [ctok EXCEPT ![p][r] = tok[r] + 1]
          /\ UNCHANGED changes
       \/ /\ claim' = [claim EXCEPT ![r] = p]               \* Indeterminate, applied
          /\ tok' = [tok EXCEPT ![r] = tok[r] + 1]
          /\ cst' = [cst EXCEPT ![p][r] = "unres"]
          /\ UNCHANGED ctok
          /\ Spend
       \/ /\ UNCHANGED <<claim, tok, ctok>>                 \* Indeterminate, not applied
          /\ cst' = [cst EXCEPT ![p][r] = "unres"]
          /\ Spend
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, res, drain, ack, bar>>
    /\ UNCHANGED <<pst, lapsed, desired, lease, coord, seen, hist>>

\* Resolve an Indeterminate create by a linearizable read of the claim's owner
\* (DESIGN section 8 rule 4).
ResolveClaim(p, r) ==
    /\ Running(p) /\ cst[p][r] = "unres"
    /\ IF claim[r] = p
         THEN /\ cst' = [cst EXCEPT ![p][r] = "held"]
              /\ ctok' = [ctok EXCEPT ![p][r] = tok[r]]
         ELSE /\ cst' = [cst EXCEPT ![p][r] = "none"]
              /\ UNCHANGED ctok
    /\ UNCHANGED <<store, pst, lapsed, desired, lease, coord, seen, changes, hist>>

\* Grant a lease: only under a proved claim of this session, before the deadline.
\* The grant is tagged with the round the store has started (history, for BarrierCut).
Grant(p, r) ==
    /\ Running(p) /\ ~lapsed[p]
    /\ r \in desired[p] /\ cst[p][r] = "held" /\ lease[p][r] = 0
    /\ lease' = [lease EXCEPT ![p][r] = ctok[p][r]]
    /\ lastGrant' = [lastGrant EXCEPT ![r] = [t |-> ctok[p][r], p |-> p]]
    /\ lround' = [lround EXCEPT ![p][r] = started]
    /\ UNCHANGED <<store, pst, lapsed, desired, cst, ctok, coord, seen, changes, started>>

\* Delete an undesired claim after the application stopped: conditional on owner session
\* and creation revision (rule 5).  Replies: Ok, or Indeterminate (applied or not).
OwnedDelete(p, r) ==
    claim' = IF claim[r] = p /\ tok[r] = ctok[p][r]
               THEN [claim EXCEPT ![r] = NoS] ELSE claim

DeleteClaim(p, r) ==
    /\ Running(p) /\ cst[p][r] = "held" /\ r \notin desired[p] /\ lease[p][r] = 0
    /\ \/ /\ OwnedDelete(p, r)                              \* Ok
          /\ cst' = [cst EXCEPT ![p][r] = "none"]
          /\ ctok' = [ctok EXCEPT ![p][r] = 0]
          /\ UNCHANGED changes
       \/ /\ OwnedDelete(p, r)                              \* Indeterminate, applied
          /\ cst' = [cst EXCEPT ![p][r] = "del"]
          /\ UNCHANGED ctok
          /\ Spend
       \/ /\ UNCHANGED claim                                \* Indeterminate, not applied
          /\ cst' = [cst EXCEPT ![p][r] = "del"]
          /\ UNCHANGED ctok
          /\ Spend
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, res, tok, drain, ack, bar>>
    /\ UNCHANGED <<pst, lapsed, desired, lease, coord, seen, hist>>

\* An Indeterminate delete is repeated with the same guard (never re-adopted).
RetryDelete(p, r) ==
    /\ Running(p) /\ cst[p][r] = "del"
    /\ OwnedDelete(p, r)
    /\ cst' = [cst EXCEPT ![p][r] = "none"]
    /\ ctok' = [ctok EXCEPT ![p][r] = 0]
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, res, tok, drain, ack, bar>>
    /\ UNCHANGED <<pst, lapsed, desired, lease, coord, seen, changes, hist>>

-----------------------------------------------------------------------------
(* Coordinator                                                             *)

\* Election and epoch bump in one transaction (rule 10).  Ok, or Indeterminate and
\* applied (the candidate does not know it leads until it verifies).  A not-applied
\* Indeterminate election is a stutter.
Elect(p) ==
    /\ Running(p) /\ p \in alive /\ leader = NoS /\ coord[p] = 0
    /\ leader' = p
    /\ epoch' = epoch + 1
    /\ \/ coord' = [coord EXCEPT ![p] = epoch + 1] /\ UNCHANGED changes
       \/ UNCHANGED coord /\ Spend
    /\ UNCHANGED <<alive, reg, asg, res, claim, tok, drain, ack, bar>>
    /\ UNCHANGED <<pst, lapsed, desired, cst, ctok, lease, seen, hist>>

\* The view shows p's own leader key: prove it by a linearizable read, then lead.
VerifyLeader(p) ==
    /\ Running(p) /\ leader = p /\ coord[p] = 0
    /\ coord' = [coord EXCEPT ![p] = epoch]
    /\ UNCHANGED <<store, pst, lapsed, desired, cst, ctok, lease, seen, changes, hist>>

\* Read the group, compute the assignment, write the changed keys in one transaction
\* guarded by the leader key, the epoch and each key's version.  (A read-plan-write
\* whose guards held; an Indeterminate write is either this step or a stutter.)
Rebalance(p) ==
    /\ Running(p) /\ coord[p] > 0
    /\ leader = p /\ epoch = coord[p]
    /\ ~Barrier
    /\ asg \notin Targets
    /\ asg' \in Targets
    /\ UNCHANGED <<alive, reg, leader, epoch, res, claim, tok, drain, ack, bar, local, changes, hist>>

\* Barrier mode (DESIGN section 4.10), guarded like a rebalance.  A change while a round
\* runs, or a stop phase left by an earlier coordinator, writes the stop of a new round.
StopRound(p) ==
    /\ Running(p) /\ coord[p] > 0
    /\ leader = p /\ epoch = coord[p]
    /\ Barrier
    /\ IF bar.stop THEN bar.e # coord[p] ELSE asg \notin Targets
    /\ bar' = [e |-> coord[p], r |-> bar.r + 1, stop |-> TRUE]
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, res, claim, tok, drain, ack, local, changes, hist>>

\* Every registered member acknowledged this round of this epoch from its current session
\* (BadBarrier: an acknowledgement of the previous round counts too, whatever its epoch).
AllAcked ==
    \A m \in Members : reg[m] # NoS =>
        /\ ack[m].s = reg[m]
        /\ IF BadBarrier THEN ack[m].r + 1 >= bar.r
           ELSE ack[m].e = bar.e /\ ack[m].r = bar.r

\* Once all acknowledged: the new assignment and the round's start in one transaction.
StartRound(p) ==
    /\ Running(p) /\ coord[p] > 0
    /\ leader = p /\ epoch = coord[p]
    /\ Barrier /\ bar.stop /\ bar.e = coord[p]
    /\ AllAcked
    /\ asg' \in Targets
    /\ bar' = [bar EXCEPT !.stop = FALSE]
    /\ started' = bar.r
    /\ UNCHANGED <<alive, reg, leader, epoch, res, claim, tok, drain, ack, local, changes>>
    /\ UNCHANGED <<lastGrant, lround>>

\* A registered member that read a stop phase and holds nothing (no lease, no claim in any
\* state) acknowledges the round it read (session-owned key, replaced).
Ack(p) ==
    /\ Running(p) /\ p \in alive /\ reg[Name(p)] = p
    /\ seen[p].stop
    /\ \A r \in Resources : lease[p][r] = 0 /\ cst[p][r] = "none"
    /\ ack[Name(p)] # [s |-> p, e |-> seen[p].e, r |-> seen[p].r]
    /\ ack' = [ack EXCEPT ![Name(p)] = [s |-> p, e |-> seen[p].e, r |-> seen[p].r]]
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, res, claim, tok, drain, bar, local, changes, hist>>

\* A deposed coordinator (a zombie: its leader key expired, or a newer epoch exists)
\* has its guarded write rejected, and steps down.
StepDown(p) ==
    /\ Running(p) /\ coord[p] > 0
    /\ leader # p \/ epoch # coord[p]
    /\ coord' = [coord EXCEPT ![p] = 0]
    /\ UNCHANGED <<store, pst, lapsed, desired, cst, ctok, lease, seen, changes, hist>>

-----------------------------------------------------------------------------
(* Graceful leave and admin                                                *)

\* leave(): mark the session draining; the coordinator moves its resources off.
Leave(p) ==
    /\ pst[p] = "on" /\ p \in alive
    /\ Spend
    /\ pst' = [pst EXCEPT ![p] = "leaving"]
    /\ drain' = drain \cup {p}
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, res, claim, tok, ack, bar>>
    /\ UNCHANGED <<lapsed, desired, cst, ctok, lease, coord, seen, hist>>

\* Close the session once every lease was released and the member is drained (or,
\* at the leave timeout, with claims left: closing deletes them, after the stop).
CloseSession(p, timedOut) ==
    /\ pst[p] = "leaving"
    /\ \A r \in Resources : lease[p][r] = 0
    /\ IF timedOut THEN Spend
       ELSE /\ desired[p] = {}
            /\ \A r \in Resources : cst[p][r] = "none"
            /\ UNCHANGED changes
    /\ pst' = [pst EXCEPT ![p] = "left"]
    /\ Reset(p)
    /\ IF p \in alive THEN EndSession(p) ELSE UNCHANGED <<alive, reg, leader, claim, drain, ack>>
    /\ UNCHANGED <<epoch, asg, res, tok, bar, hist>>

AddResource(r) ==
    /\ r \notin res
    /\ Spend
    /\ res' = res \cup {r}
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, claim, tok, drain, ack, bar, local, hist>>

\* Removing a resource never touches its claim: its owner revokes, stops and deletes it.
\* The known-bad variant (BadRemove) deletes the claim too.
RemoveResource(r) ==
    /\ r \in res
    /\ Spend
    /\ res' = res \ {r}
    /\ claim' = IF BadRemove THEN [claim EXCEPT ![r] = NoS] ELSE claim
    /\ UNCHANGED <<alive, reg, leader, epoch, asg, tok, drain, ack, bar, local, hist>>

-----------------------------------------------------------------------------

\* Actions the protocol (and the store) take by themselves: weakly fair.
ProtocolStep(p) ==
    \/ Register(p) \/ KeepAlive(p) \/ LearnExpired(p) \/ ReadAssignment(p)
    \/ Elect(p) \/ VerifyLeader(p) \/ Rebalance(p) \/ StepDown(p)
    \/ StopRound(p) \/ StartRound(p) \/ Ack(p)
    \/ \E r \in Resources :
          Revoke(p, r) \/ CreateClaim(p, r) \/ ResolveClaim(p, r) \/ Grant(p, r)
          \/ DeleteClaim(p, r) \/ RetryDelete(p, r)
    \/ CloseSession(p, FALSE)

\* The environment: crashes, pauses, restarts, leaves, admin changes (budgeted).
Environment ==
    \/ \E p \in Procs : Start(p) \/ Lapse(p) \/ Crash(p) \/ Leave(p)
                        \/ Expire(p) \/ CloseSession(p, TRUE)
    \/ \E r \in Resources : AddResource(r) \/ RemoveResource(r)

\* Quiescence is a stutter, not a deadlock (this TLC has no CHECK_DEADLOCK option).
Quiescent == UNCHANGED vars

Next == Environment \/ (\E p \in Procs : ProtocolStep(p)) \/ Quiescent

\* Fairness: every protocol step of every process; the first start of each name; a
\* restart after a crash or an expiry; the store expiring the session of a dead process.
\* Budgeted environment actions and the expiry of a merely lapsed session are unfair.
Fairness ==
    /\ \A p \in Procs :
          /\ WF_vars(Register(p)) /\ WF_vars(KeepAlive(p)) /\ WF_vars(LearnExpired(p))
          /\ WF_vars(ReadAssignment(p)) /\ WF_vars(Elect(p)) /\ WF_vars(VerifyLeader(p))
          /\ WF_vars(Rebalance(p)) /\ WF_vars(StepDown(p)) /\ WF_vars(CloseSession(p, FALSE))
          /\ WF_vars(StopRound(p)) /\ WF_vars(StartRound(p)) /\ WF_vars(Ack(p))
          /\ WF_vars(Start(p) /\ UNCHANGED changes)
          /\ WF_vars(Expire(p) /\ ~Running(p))
          /\ \A r \in Resources :
                /\ WF_vars(Revoke(p, r)) /\ WF_vars(ResolveClaim(p, r))
                /\ WF_vars(Grant(p, r)) /\ WF_vars(RetryDelete(p, r))
                /\ WF_vars(CreateClaim(p, r) /\ UNCHANGED changes)
                /\ WF_vars(DeleteClaim(p, r) /\ UNCHANGED changes)

Spec == Init /\ [][Next]_vars
FairSpec == Spec /\ Fairness

-----------------------------------------------------------------------------
(* Properties                                                              *)

TypeOK ==
    /\ alive \subseteq Procs
    /\ res \subseteq Resources
    /\ \A r \in Resources : claim[r] \in Procs \cup {NoS}
    /\ \A p \in Procs : \A r \in Resources :
          /\ cst[p][r] \in {"none", "held", "unres", "del"}
          /\ lease[p][r] \in Nat
    /\ changes \in 0..MaxChanges

\* Guarantee 1: no two processes (whatever their names) hold a valid lease on one resource.
NoDoubleAccess ==
    \A r \in Resources : \A p, q \in Procs :
        (p # q /\ lease[p][r] > 0 /\ lease[q][r] > 0) => FALSE

\* Fencing: a valid lease carries the newest token ever granted on its resource, and
\* that token is the creation revision of a claim the holder created.
LeaseTokenIsNewest ==
    \A r \in Resources : \A p \in Procs :
        lease[p][r] > 0 => (lease[p][r] = lastGrant[r].t /\ lastGrant[r].p = p)

\* Barrier mode: the cut.  All valid leases were granted in one round: no lease of a
\* round is granted while a lease of an earlier round is still held.  Judged from the
\* rounds the store started, not from what a process read.
BarrierCut ==
    \A p, q \in Procs : \A r1, r2 \in Resources :
        (lease[p][r1] > 0 /\ lease[q][r2] > 0) => lround[p][r1] = lround[q][r2]

\* Not a property of the protocol: a witness that BarrierCut is not vacuous.  The
\* BarrierReach config asserts it and TLC must violate it: a resource claimed before is
\* claimed again and granted in a later round (a whole stop, acknowledge, start cycle).
NoRegrantInLaterRound ==
    \A p \in Procs : \A r \in Resources :
        lease[p][r] > 0 => lround[p][r] <= 1 \/ tok[r] <= 1

\* Tokens per resource only grow: a grant by another session carries a larger token.
TokensIncrease ==
    [][\A r \in Resources :
         lastGrant'[r] # lastGrant[r] => lastGrant'[r].t > lastGrant[r].t]_vars

\* Guarantee 2: every resource is held (claimed, leased) by exactly one live, assigned,
\* non-draining member; no claim remains on a removed resource; the assignment is
\* balanced +-1 over the live members.
Converged ==
    \/ Active = {} /\ \A p \in Procs : ~Running(p)
    \/ /\ Active # {}
       /\ \A r \in res : \E m \in Active :
             /\ asg[m].s = reg[m] /\ r \in asg[m].set
             /\ claim[r] = reg[m] /\ lease[reg[m]][r] > 0
       /\ \A r \in Resources \ res : claim[r] = NoS
       /\ \A a, b \in Active :
             Cardinality(asg[a].set) <= Cardinality(asg[b].set) + 1

\* Once changes stop (the budget is finite), the group converges and stays converged.
EventuallyConverged == <>[]Converged
=============================================================================
