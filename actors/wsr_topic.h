//  wsr_topic — (placeholder)
#ifndef WSR_TOPIC_H_INCLUDED
#define WSR_TOPIC_H_INCLUDED
#endif
