// In the emulator's package: MessageBacklog and Clock are package-private.
package com.google.cloud.pubsub.testing.v1;

import com.google.protobuf.ByteString;
import com.google.protobuf.util.Durations;
import com.google.pubsub.v1.*;
import java.lang.reflect.Method;
import java.util.*;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The Pub/Sub emulator's redelivery bug in its own classes (see bench/pubsub_emulator.py).
 *
 * <p>Drives the emulator's MessageBacklog with a fake clock, as its push loop and its 100 ms
 * redelivery timer do: N messages under a retry policy whose pushes always fail together. With
 * one message the timer keeps going; with two, both get the same redelivery time (now + whole
 * seconds of backoff), share one set in delayedMessagesByTime, are re-inserted on every sweep,
 * and the timer then nacks an ack id it already nacked: NullPointerException, and a
 * ScheduledExecutorService never runs a task again once it threw.
 *
 * <pre>
 * JAR="$(gcloud info --format='value(installation.sdk_root)')/platform/pubsub-emulator/lib/*"
 * javac -cp "$JAR" -d /tmp/repro bench/PubsubEmulatorBacklogRepro.java
 * java -cp "$JAR:/tmp/repro" com.google.cloud.pubsub.testing.v1.PubsubEmulatorBacklogRepro 2
 * </pre>
 */
public class PubsubEmulatorBacklogRepro {
  public static void main(String[] args) throws Exception {
    int n = Integer.parseInt(args[0]);
    long[] now = {1_000_000L};
    Clock clock = () -> now[0];
    Subscription sub = Subscription.newBuilder().setName("projects/p/subscriptions/sub")
        .setTopic("projects/p/topics/top").setAckDeadlineSeconds(60)
        .setRetryPolicy(RetryPolicy.newBuilder().setMinimumBackoff(Durations.fromSeconds(1))
            .setMaximumBackoff(Durations.fromSeconds(5))).build();
    Topic topic = Topic.newBuilder().setName("projects/p/topics/top").build();
    MessageBacklog backlog = new MessageBacklog(sub, topic, new AtomicLong(),
        MessageBacklog.RedeliveryPolicy.RESEND_EXPIRED, clock);
    List<PubsubMessage> msgs = new ArrayList<>();
    for (int i = 0; i < n; i++) {
      msgs.add(PubsubMessage.newBuilder().setMessageId("m" + i).setData(ByteString.copyFromUtf8("x")).build());
    }
    backlog.setRetryPolicy(sub.getRetryPolicy());  // as the server does after creating it
    backlog.addAll(msgs);
    Method expire = MessageBacklog.class.getDeclaredMethod("expireOutstandingMessages");
    expire.setAccessible(true);
    for (int tick = 0; tick < 600; tick++) {          // 60 s in 100 ms steps
      List<ReceivedMessage> got = backlog.pull(10);   // a push loop's pull (also the sweep)
      List<String> ackIds = new ArrayList<>();
      for (ReceivedMessage r : got) {
        ackIds.add(r.getAckId());
        System.out.printf("t=%5.1f s push %s -> 500%n", tick / 10.0, r.getMessage().getMessageId());
      }
      if (!ackIds.isEmpty()) {                        // what PushLoop does on a failed push
        backlog.modifyAckDeadline(ackIds, Collections.nCopies(ackIds.size(), 1000L));
      }
      now[0] += 100;
      try {
        expire.invoke(backlog);                        // the 100 ms redelivery timer
      } catch (java.lang.reflect.InvocationTargetException e) {
        System.out.printf("t=%5.1f s redelivery timer threw %s%n", tick / 10.0, e.getCause());
        StackTraceElement[] st = e.getCause().getStackTrace();
        System.out.println("    at " + st[0] + "\n    at " + st[1]);
        System.out.println("(a ScheduledExecutorService never runs a task again once it threw)");
        System.exit(0);
      }
    }
    System.out.println("timer never threw");
    System.exit(0);
  }
}
