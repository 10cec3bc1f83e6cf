//  wsr_node — (placeholder)
#ifndef WSR_NODE_H_INCLUDED
#define WSR_NODE_H_INCLUDED
#endif
